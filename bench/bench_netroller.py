"""NetRoller fine-tune epoch time: latents from the cache vs already in RAM vs the GM online.

The three fine-tunes of a round (latents through the cache reader, the same latents already in RAM, the GM
online) start from the same weights and run in lockstep, step by step, taking turns in changing order: step
k of each is the same batch on the same weights (the cached, in-RAM and online latents are equal), and a
burst of load from other processes lands on all three alike. Per round:

- train_cache_overhead_ratio: the median over the epoch's steps of (step time with the cache / the same
  step with the latents in RAM); goal <= 1.02: the cache must never be what training waits for. A step is
  ~0.1 s and one preempted step moves an epoch's sum by several per cent on a shared machine, which the
  per-step median does not let through; train_cache_overhead_epoch_ratio is the plain ratio of epoch times.
- cache_vs_online_epoch_speedup: epoch time with the GM in the loop (the authors' way, `--online`, T=8)
  / epoch time reading the cache; same GM (the embedded tiny one), same data, same model.
- latent_fetch_ms_per_batch_*: the time the loader spends getting a batch's latents from each source.

Each ratio is reported as the median over the rounds with its min and max.

    python -m netroller.bench.run netroller
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from netroller.bench.rounds import check_rounds, order, per_round, spread
from netroller.models.vad.batch import LatentInputs


@dataclass(frozen=True, kw_only=True)
class NetRollerBench:
    """Sizes of the fine-tune benchmark (`full()` is the reported run, `smoke()` the test's)."""

    scenes: int = 3
    """Synthetic scenes (the first ones are mini_train; 3 scenes give 2 train scenes)."""
    samples_per_scene: int = 16
    """Keyframes per scene."""
    tokens: int = 8
    """T of the harvest and of the online GM."""
    batch_size: int = 2
    """Training batch size."""
    rounds: int = 7
    """Rounds of the three lockstep epochs; every ratio is their median (with min and max)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check_rounds(f"NetRollerBench.{f.name}", getattr(self, f.name))
        if self.scenes < 2:
            raise ValueError(
                f"NetRollerBench.scenes must be >= 2 (one train scene at least), got {self.scenes}"
            )


def full() -> NetRollerBench:
    return NetRollerBench()


def smoke() -> NetRollerBench:
    """Seconds: 2 scenes of 4 keyframes (one train scene), 2 rounds."""
    return NetRollerBench(scenes=2, samples_per_scene=4, rounds=2)


class InMemoryLatents:
    """Every sample's latents read once up front; `get` only stacks tensors (the in-RAM reference)."""

    def __init__(self, source, tokens: list[str]):
        one = source.get(tokens, [0] * len(tokens))
        self.rows = {t: (one.hidden[i], one.length[i], one.present[i]) for i, t in enumerate(tokens)}
        self.empty = (torch.zeros_like(one.hidden[0]), torch.tensor(0), torch.tensor(False))

    def categories(self, token: str) -> tuple[str, ...]:
        return ("template",)  # the bench's caches ask one question per sample

    def get(self, tokens, questions):
        rows = [self.rows.get(t, self.empty) if t is not None else self.empty for t in tokens]
        return LatentInputs(
            hidden=torch.stack([r[0] for r in rows]),
            length=torch.stack([r[1] for r in rows]),
            present=torch.stack([r[2] for r in rows]),
        )


class _TimedSource:
    """A latent source that adds up the time its `get` takes."""

    def __init__(self, source) -> None:
        self.source = source
        self.seconds = 0.0
        self.calls = 0

    def categories(self, token: str) -> tuple[str, ...]:
        return self.source.categories(token)

    def get(self, tokens, questions):
        start = time.perf_counter()
        out = self.source.get(tokens, questions)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class _Epoch:
    """One fine-tune epoch from a fresh model, stepped from outside so that several run in lockstep."""

    def __init__(self, cfg, nr, setup, source) -> None:
        from netroller.data.latents import LatentCollate
        from netroller.models.vad.config import recipe
        from netroller.models.vad.detector import VAD
        from netroller.stages.finetune import netroller_hooks
        from netroller.stages.train import build_optimizer, epoch_loader, lr_factor

        torch.manual_seed(0)  # the adapter (built by the hooks) and the model start alike in every run
        cfg, hooks, _ = netroller_hooks(cfg, nr, setup)
        self.source = _TimedSource(source)
        hooks.collate = LatentCollate(self.source, hooks.collate.collate)
        self.model = VAD(recipe(cfg.recipe))
        if hooks.prepare is not None:
            hooks.prepare(self.model)
        self.opt = build_optimizer(self.model, hooks.modules, cfg)
        total = -(-len(hooks.dataset) // cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, total, cfg, total))
        # as `stages.train.train` runs epoch 1
        self.model.train(not hooks.freeze_model)
        for m in hooks.modules.values():
            m.train()
        hooks.dataset.set_epoch(1)
        self.batches = iter(epoch_loader(hooks.dataset, cfg, 1, hooks.collate)[0])
        self.cfg, self.hooks = cfg, hooks
        self.steps: list[float] = []  # seconds of each step, the loading of its batch included

    def step(self) -> bool:
        """Load the next batch (its latents included) and train on it; False when the epoch is over."""
        from netroller.stages.train import train_step

        start = time.perf_counter()
        batch = next(self.batches, None)
        if batch is None:
            return False
        train_step(self.model, [batch], self.opt, self.sched, self.cfg, self.hooks)
        self.steps.append(time.perf_counter() - start)
        return True


def _lockstep(epochs: dict[str, _Epoch], first: int) -> None:
    live = list(epochs)
    step = first
    while live:
        for name in order(live, step):
            if not epochs[name].step():
                live.remove(name)
        step += 1


def run(size: NetRollerBench | None = None) -> dict:
    from netroller.data.index import read_index
    from netroller.data.synth import SynthConfig, generate
    from netroller.models.gm.tiny import build_tiny_gm
    from netroller.stages.finetune import NetRollerConfig, finetune_c1, open_latents
    from netroller.stages.harvest import HarvestConfig, harvest
    from netroller.stages.prepare import PrepareConfig, prepare

    size = size or full()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-netroller-") as tmp_s:
            tmp = Path(tmp_s)
            root = generate(
                SynthConfig(
                    out=tmp / "nuscenes", scenes=size.scenes, samples_per_scene=size.samples_per_scene, seed=0
                )
            )
            index = prepare(PrepareConfig(dataroot=root, version="v1.0-mini", out=tmp / "index.parquet"))
            gm = build_tiny_gm(tmp / "gm")
            start = time.perf_counter()
            cache = harvest(
                HarvestConfig(index=index, out=tmp / "cache", model=str(gm), tokens=size.tokens, workers=0)
            )
            harvest_s = time.perf_counter() - start
            cfg = finetune_c1(index, tmp / "run", epochs=1, batch_size=size.batch_size, split="train")
            nr = {
                "cache": NetRollerConfig(cache=cache),
                "online": NetRollerConfig(online=True, model=str(gm), tokens=size.tokens),
            }
            setups = {"cache": open_latents(nr["cache"], index), "online": open_latents(nr["online"], index)}
            records = read_index(index).records
            sources = {
                "cache": (nr["cache"], setups["cache"], setups["cache"].source),
                "ram": (
                    nr["cache"],
                    setups["cache"],
                    InMemoryLatents(setups["cache"].source, [r.sample_token for r in records]),
                ),
                "online": (nr["online"], setups["online"], setups["online"].source),
            }
            seconds: dict[str, list[float]] = {name: [] for name in sources}
            fetch_ms: dict[str, list[float]] = {name: [] for name in sources}
            step_ratio: list[float] = []  # per round: median over steps of cache step / the same step in RAM
            for k in range(size.rounds):
                epochs = {name: _Epoch(cfg, n, s, src) for name, (n, s, src) in sources.items()}
                _lockstep(epochs, k)
                for name, epoch in epochs.items():
                    seconds[name].append(sum(epoch.steps))
                    fetch_ms[name].append(1e3 * epoch.source.seconds / max(epoch.source.calls, 1))
                pairs = zip(epochs["cache"].steps, epochs["ram"].steps, strict=True)
                step_ratio.append(statistics.median(c / r for c, r in pairs))
            n = len(read_index(index).split("train"))
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "samples_per_epoch": n,
        "tokens": size.tokens,
        "batch_size": size.batch_size,
        "rounds": size.rounds,
        "epoch_seconds_cache": round(med["cache"], 3),
        "epoch_seconds_ram": round(med["ram"], 3),
        "epoch_seconds_online": round(med["online"], 3),
        **spread("train_cache_overhead_ratio", step_ratio),
        **spread("train_cache_overhead_epoch_ratio", per_round(seconds["cache"], seconds["ram"])),
        **spread("cache_vs_online_epoch_speedup", per_round(seconds["online"], seconds["cache"])),
        **{
            f"latent_fetch_ms_per_batch_{name}": round(statistics.median(v), 3)
            for name, v in fetch_ms.items()
        },
        "harvest_seconds_once": round(harvest_s, 2),
        "gm_seconds_per_sample_online": round((med["online"] - med["cache"]) / n, 4),
    }
