"""Shared fixtures, each built once per test run: the synthetic dataset, its index, the tiny GMs (Hugging
Face and LLaMA-Adapter), a tiny latent cache and one local Ray instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole run: on 2 cores, with Ray actors and worker subprocesses beside the
    test process, torch's default threads spin against each other (measured: up to 15x slower per step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic nuScenes v1.0-mini: 4 scenes (3 mini_train, 1 mini_val) x 8 keyframes."""
    from netroller.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "nuscenes"
    return generate(SynthConfig(out=out, scenes=4, samples_per_scene=8, seed=0))


@pytest.fixture(scope="session")
def nusc(synth_root):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_root), verbose=False)


@pytest.fixture(scope="session")
def index_path(synth_root, tmp_path_factory) -> Path:
    from netroller.stages.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("index") / "index.parquet"
    return prepare(PrepareConfig(dataroot=synth_root, version="v1.0-mini", out=out))


@pytest.fixture(scope="session")
def tiny_gm(tmp_path_factory) -> Path:
    """The embedded tiny random-weight LLaVA GM, saved once per run (save_pretrained folder)."""
    from netroller.models.gm.tiny import build_tiny_gm

    return build_tiny_gm(tmp_path_factory.mktemp("gm") / "tiny-gm")


@pytest.fixture(scope="session")
def tiny_llama_adapter(tmp_path_factory) -> Path:
    """The tiny random-weight LLaMA-Adapter V2 in its released file formats, built once per run."""
    from netroller.models.gm.tiny import build_tiny_gm

    return build_tiny_gm(tmp_path_factory.mktemp("gm") / "tiny-llama-adapter", arch="llama-adapter")


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance shared by every test that needs Ray; shut down at the end of the run."""
    import ray

    ray.init(num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cache(index_path, tiny_gm, tmp_path_factory) -> Path:
    """A harvest of `index_path` with the tiny GM: T=2, all layers, shard size 4, in-process."""
    from netroller.stages.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("cache") / "cache"
    cfg = HarvestConfig(
        index=index_path, out=out, model=str(tiny_gm), tokens=2, layers="all", shard_size=4, workers=0
    )
    return harvest(cfg)


@pytest.fixture(scope="session")
def vad_index(tmp_path_factory) -> Path:
    """A hand-made 6-sample index (4 train, 2 val) with small random JPEGs and nuScenes-like camera rigs:
    boxes, futures and map vectors (a divider, a boundary, a closed crossing) for VAD's model/loss tests."""
    import numpy as np
    from PIL import Image

    from netroller.data.index import CAMERAS, IndexMeta, SampleRecord, write_index

    root = tmp_path_factory.mktemp("vad_data")
    rng = np.random.default_rng(0)
    w, h = 240, 135
    yaws = np.deg2rad([0, 55, -55, 180, -110, 110])  # heading of each camera, clockwise from +y
    cam_to_lidar = np.zeros((6, 4, 4))
    for i, yaw in enumerate(yaws):
        right, down, fwd = [np.cos(yaw), -np.sin(yaw), 0], [0, 0, -1], [np.sin(yaw), np.cos(yaw), 0]
        cam_to_lidar[i, :3, :3] = np.stack([right, down, fwd], 1)
        cam_to_lidar[i, :3, 3] = [0, 0, 0.3]
        cam_to_lidar[i, 3, 3] = 1
    intr = np.tile(np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]]), (6, 1, 1))
    crossing = np.stack(
        [[-5 + 10 * t, 12.0] for t in np.linspace(0, 1, 6)]
        + [[5, 12 + 3 * t] for t in np.linspace(0, 1, 6)[1:]]
        + [[5 - 10 * t, 15] for t in np.linspace(0, 1, 6)[1:]]
        + [[-5, 15 - 3 * t] for t in np.linspace(0, 1, 5)[1:]]
    )
    lines = np.linspace(-28, 28, 20)
    records = []
    for s in range(6):
        paths = []
        for cam in CAMERAS:
            rel = f"samples/{cam}/s{s}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / rel)
            paths.append(rel)
        speed = 2.0 + s
        boxes = np.array(
            [
                [3.0 + s, 8.0, 0.0, 1.9, 4.5, 1.6, 0.3, 0.0, 2.0],
                [-4.0, -6.0 - s, 0.0, 0.7, 0.7, 1.8, 1.0, 0.5, 0.0],
                [2.0, 40.0, 0.0, 2.0, 4.0, 1.5, 0.0, 0.0, 0.0],
            ],
            dtype=np.float32,
        )  # the last is out of range
        fut = np.cumsum(np.tile(boxes[:, None, 7:9] * 0.5, (1, 6, 1)), 1).astype(np.float32)
        records.append(
            SampleRecord(
                sample_token=f"tok{s}",
                scene_token="scene0",
                scene_name="scene-0001",
                split="train" if s < 4 else "val",
                frame_index=s,
                timestamp=s * 500_000,
                map_name="synth",
                cam_paths=tuple(paths),
                cam_image_sizes=np.tile([w, h], (6, 1)),
                cam_intrinsics=intr,
                cam_to_lidar=cam_to_lidar,
                lidar_to_ego=np.eye(4),
                ego_to_global=np.eye(4),
                ego_velocity=np.array([0.0, speed], np.float32),
                ego_his_traj=np.array([[0, -speed], [0, -speed / 2]], np.float32),
                ego_his_mask=np.ones(2, np.float32),
                ego_fut_traj=np.stack([np.full(6, 0.1 * s), speed * 0.5 * np.arange(1, 7)], 1).astype(
                    np.float32
                ),
                ego_fut_mask=np.array([1, 1, 1, 1, 1, float(s != 3)], np.float32),
                command=2,
                gt_boxes=boxes,
                gt_labels=np.array([0, 8, 0]),
                gt_num_lidar_pts=np.array([10, 5, 1]),
                gt_instance_tokens=("a", "b", "c"),
                gt_fut_traj=fut,
                gt_fut_mask=np.ones((3, 6), np.float32),
                map_vectors=np.stack(
                    [
                        np.stack([np.full(20, 1.8), lines], 1),
                        np.stack([np.full(20, -7.0), lines], 1),
                        crossing,
                    ]
                ).astype(np.float32),
                map_labels=np.array([0, 2, 1]),
                # VAD reads the ego's speed only from the CAN bus (entries 13..15: velocity in the ego frame).
                can_bus=np.concatenate([np.zeros(13), [speed, 0.0, 0.0], np.zeros(2)]),
            )
        )
    return write_index(records, root / "index.parquet", IndexMeta(dataroot=str(root), version="hand-made"))
