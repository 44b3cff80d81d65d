"""Shared fixtures, each built once per test run: the synthetic dataset, its index, the tiny GM,
a tiny latent cache and one local Ray instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


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
