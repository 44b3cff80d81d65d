"""VAD speed: debug() training samples/s (CPU, batch 2), forward latency of vad-tiny and vad-base at batch 1
(CPU, and CUDA when available). Random inputs of the right shapes; figures are medians after warm-up."""

from __future__ import annotations

import math
import statistics
import time

import torch

from netroller.models.vad.batch import Batch, VADInputs, VADTargets
from netroller.models.vad.config import VADConfig, debug, vad_base, vad_tiny
from netroller.models.vad.losses import vad_loss
from netroller.models.vad.model import VAD, count_parameters


def random_batch(cfg: VADConfig, batch: int, device: str) -> Batch:
    """Random images, 6 outward-looking pinhole cameras, a few boxes and map vectors per sample."""
    w, h = cfg.image_size
    g = torch.Generator().manual_seed(0)
    l2i = torch.zeros(batch, 6, 4, 4)
    for n in range(6):
        yaw = n * math.pi / 3
        rot = torch.tensor(
            [[math.cos(yaw), -math.sin(yaw), 0.0], [0.0, 0.0, -1.0], [math.sin(yaw), math.cos(yaw), 0.0]]
        )
        l2i[:, n, :3, :3] = torch.tensor([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]]) @ rot
        l2i[:, n, 3, 3] = 1
    n_box, n_map = 8, 6
    boxes = torch.cat(
        [
            torch.rand(n_box, 3, generator=g) * 20 - 10,
            torch.rand(n_box, 3, generator=g) * 3 + 1,
            torch.rand(n_box, 3, generator=g),
        ],
        -1,
    )
    inputs = VADInputs(
        images=torch.randn(batch, 6, 3, h, w, generator=g),
        lidar_to_image=l2i,
        command=torch.arange(batch) % 3,
        ego_velocity=torch.randn(batch, 2, generator=g),
    )
    targets = VADTargets(
        boxes=[boxes] * batch,
        labels=[torch.arange(n_box) % cfg.num_det_classes] * batch,
        agent_fut_traj=[torch.randn(n_box, cfg.fut_steps, 2, generator=g).cumsum(1)] * batch,
        agent_fut_mask=[torch.ones(n_box, cfg.fut_steps)] * batch,
        map_vectors=[torch.randn(n_map, cfg.map_points, 2, generator=g).cumsum(1)] * batch,
        map_labels=[torch.arange(n_map) % cfg.num_map_classes] * batch,
        ego_fut_traj=torch.randn(batch, cfg.fut_steps, 2, generator=g).cumsum(1),
        ego_fut_mask=torch.ones(batch, cfg.fut_steps),
    )
    return Batch(inputs=inputs, targets=targets, sample_tokens=[f"s{i}" for i in range(batch)]).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_samples_per_s(
    cfg: VADConfig, *, batch: int = 2, warmup: int = 2, steps: int = 5, device: str = "cpu"
) -> float:
    torch.manual_seed(0)
    model = VAD(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = random_batch(cfg, batch, device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = vad_loss(model(b.inputs), b.targets, b.inputs.command, cfg)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


@torch.no_grad()
def forward_latency_s(cfg: VADConfig, *, warmup: int = 1, runs: int = 3, device: str = "cpu") -> float:
    torch.manual_seed(0)
    model = VAD(cfg).to(device).eval()
    inputs = random_batch(cfg, 1, device).inputs
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        model(inputs)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run() -> dict:
    out = {
        "vad_tiny_params": count_parameters(VAD(vad_tiny())),
        "vad_base_params": count_parameters(VAD(vad_base())),
        "debug_train_samples_per_s_cpu": round(train_samples_per_s(debug()), 3),
        "vad_tiny_forward_s_cpu": round(forward_latency_s(vad_tiny()), 3),
        "vad_base_forward_s_cpu": round(forward_latency_s(vad_base(), runs=2), 3),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
        out["debug_train_samples_per_s_cuda"] = round(
            train_samples_per_s(debug(), steps=10, device="cuda"), 3
        )
        out["vad_tiny_forward_s_cuda"] = round(forward_latency_s(vad_tiny(), runs=10, device="cuda"), 4)
        out["vad_base_forward_s_cuda"] = round(forward_latency_s(vad_base(), runs=10, device="cuda"), 4)
        out["vad_base_train_samples_per_s_cuda"] = round(
            train_samples_per_s(vad_base(), batch=1, steps=5, device="cuda"), 3
        )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
