"""VAD speed, for the VAD that `train` and `eval` run (`models.vad`), fed by their own data path:
batches of a synthetic nuScenes through `SampleDataset` and `collate`, training queue included. The full
run renders its cameras at nuScenes' 1600 x 900, so VAD-Tiny sees 6 x 3 x 384 x 640 and VAD-Base
6 x 3 x 736 x 1280, the released models' input sizes.

- debug_train_samples_per_s_cpu: debug() training (batch 2, `stages.train.train_step`: forward with the
  queue's earlier frames, VAD's losses, backward, AdamW), median step after warm-up.
- vad_tiny_train_samples_per_s_cpu: VAD-Tiny training the same way at batch 1 (the official batch per
  GPU), its 2-frame queue included.
- vad_{tiny,base}_forward_s_cpu: one frame at batch 1 through `forward_test` (a scene's first frame), median
  after one warm-up pass; CUDA figures as well when a GPU is there.

    python -m netroller.bench.run vad
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from netroller.bench.rounds import check_rounds
from netroller.models.vad.config import VADConfig, debug, vad_base, vad_tiny
from netroller.models.vad.detector import VAD, count_parameters


@dataclass(frozen=True, kw_only=True)
class VADBench:
    """What the VAD benchmark times (`full()` is the reported run, `smoke()` the test's)."""

    tiny: Callable[[], VADConfig] = vad_tiny
    """Recipe behind the `vad_tiny_*` figures."""
    base: Callable[[], VADConfig] = vad_base
    """Recipe behind the `vad_base_*` figures."""
    train_steps: int = 5
    """Timed training steps of debug() (after 2 warm-up steps)."""
    forward_runs: int = 3
    """Timed forward passes of vad-tiny (vad-base: one fewer, at least 1), after one warm-up."""
    tiny_train_steps: int = 2
    """Timed training steps of vad-tiny (after 1 warm-up step)."""
    image_size: tuple[int, int] = (1600, 900)
    """(width, height) the synthetic cameras are rendered at: nuScenes' for the reported figures."""

    def __post_init__(self) -> None:
        check_rounds("VADBench.train_steps", self.train_steps)
        check_rounds("VADBench.forward_runs", self.forward_runs)
        check_rounds("VADBench.tiny_train_steps", self.tiny_train_steps)


def full() -> VADBench:
    return VADBench()


def smoke() -> VADBench:
    """Seconds: debug() stands in for both recipes (the figures say which recipes ran)."""
    return VADBench(
        tiny=debug, base=debug, train_steps=1, forward_runs=1, tiny_train_steps=1, image_size=(480, 270)
    )


def _index(tmp: Path, image_size: tuple[int, int]) -> Path:
    """2 synthetic scenes of 4 keyframes through `prepare`: 4 training samples, with their queues."""
    from netroller.data.synth import SynthConfig, generate
    from netroller.stages.prepare import PrepareConfig, prepare

    w, h = image_size
    config = SynthConfig(
        out=tmp / "nuscenes", scenes=2, samples_per_scene=4, seed=0, image_width=w, image_height=h
    )
    root = generate(config)
    return prepare(PrepareConfig(dataroot=root, version="v1.0-mini", out=tmp / "index.parquet"))


def _batch(index: Path, cfg: VADConfig, size: int, *, train: bool):
    """The first `size` training samples as the loader batches them for `cfg` (its image scale, queue)."""
    from netroller.data.dataset import SampleDataset, collate
    from netroller.data.index import read_index

    dataset = SampleDataset(read_index(index), "train", vad=cfg, train=train, seed=0)
    dataset.set_epoch(1)
    return collate([dataset[i] for i in range(size)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_samples_per_s(
    index: Path, cfg: VADConfig, *, steps: int, warmup: int = 2, batch_size: int = 2, device: str = "cpu"
) -> float:
    from netroller.stages.train import TrainConfig, TrainHooks, build_optimizer, train_step

    batch = _batch(index, cfg, batch_size, train=True).to(device)
    train_cfg = TrainConfig(index=index, out=index.parent / "unused-run")
    torch.manual_seed(0)
    model = VAD(cfg).to(device).train()
    opt = build_optimizer(model, {}, train_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        train_step(model, [batch], opt, sched, train_cfg, TrainHooks())
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch.inputs.batch_size / statistics.median(times)


@torch.no_grad()
def forward_latency_s(
    index: Path, cfg: VADConfig, *, runs: int, warmup: int = 1, device: str = "cpu"
) -> float:
    batch = _batch(index, cfg, 1, train=False).to(device)
    torch.manual_seed(0)
    model = VAD(cfg).to(device).eval()
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        model.forward_test(batch.inputs.frame, batch.inputs.scene_tokens[0], None)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(size: VADBench | None = None) -> dict:
    size = size or full()
    base_runs = max(size.forward_runs - 1, 1)
    with tempfile.TemporaryDirectory(prefix="bench-vad-") as tmp:
        index = _index(Path(tmp), size.image_size)
        out = {
            "model": "models.vad",
            "recipes": {"tiny": size.tiny.__name__, "base": size.base.__name__},
            "vad_tiny_params": count_parameters(VAD(size.tiny())),
            "vad_base_params": count_parameters(VAD(size.base())),
            "debug_train_samples_per_s_cpu": round(
                train_samples_per_s(index, debug(), steps=size.train_steps), 3
            ),
            "vad_tiny_train_samples_per_s_cpu": round(
                train_samples_per_s(index, size.tiny(), steps=size.tiny_train_steps, warmup=1, batch_size=1),
                4,
            ),
            "vad_tiny_forward_s_cpu": round(forward_latency_s(index, size.tiny(), runs=size.forward_runs), 3),
            "vad_base_forward_s_cpu": round(forward_latency_s(index, size.base(), runs=base_runs), 3),
            "cpu_threads": torch.get_num_threads(),
            "image_size": list(size.image_size),
        }
        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name(0)
            out["debug_train_samples_per_s_cuda"] = round(
                train_samples_per_s(index, debug(), steps=2 * size.train_steps, device="cuda"), 3
            )
            for name, cfg in (("tiny", size.tiny), ("base", size.base)):
                out[f"vad_{name}_forward_s_cuda"] = round(
                    forward_latency_s(index, cfg(), runs=3 * size.forward_runs, device="cuda"), 4
                )
            out["vad_base_train_samples_per_s_cuda"] = round(
                train_samples_per_s(index, size.base(), steps=size.train_steps, device="cuda"), 3
            )
    return out
