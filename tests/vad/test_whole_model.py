"""The whole VAD against the official detector (`VAD_tiny_e2e.py`, shrunk), recorded in
tests/fixtures/vad/whole_model_small.pt (the README there says how): the test path over a scene with ego
motion and a scene change, and one training step's loss terms.

At embed 256 (which the official map lane encoder fixes) the model has ~8M weights, too many for a fixture
file, so the fixture holds the recipe instead: every weight and image comes from a 32-bit integer hash of
its name and index (`hashed_uniform`), computed in exact int64 arithmetic so that it is the same on every
machine and torch version; the official model was filled by the same recipe, and the fixture keeps each
tensor's sum to check that ours was filled identically.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from netroller.models.vad.config import vad_tiny
from netroller.models.vad.detector import VAD, CameraFrame
from netroller.models.vad.losses import vad_losses
from netroller.models.vad.map_targets import prepare_map_gt
from netroller.models.vad.targets import VADTargets

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vad" / "whole_model_small.pt"
OUTPUT_NAMES = (
    "bev_embed", "all_cls_scores", "all_bbox_preds", "all_traj_preds", "all_traj_cls_scores",
    "map_all_cls_scores", "map_all_bbox_preds", "map_all_pts_preds", "ego_fut_preds",
)  # fmt: skip
OMITTED = ("loss_map_bbox", "loss_map_iou")  # weight 0 in the configs: ours leaves them out
RTOL = 1e-4
MASK32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash on int64 (every product stays below 2**59, so the arithmetic is exact)."""
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & MASK32
    return x ^ (x >> 16)


def hashed_uniform(key: str, n: int) -> Tensor:
    """n float64 values in (0, 1), a function of the key and the index only."""
    x = _mix(_mix(torch.arange(n, dtype=torch.int64)) ^ zlib.crc32(key.encode()))
    return (x.double() + 0.5) / 2**32


def centered(key: str, shape: tuple[int, ...]) -> Tensor:
    """Uniform values of mean 0 and variance 1."""
    return ((hashed_uniform(key, int(np.prod(shape))) * 2 - 1) * 3**0.5).reshape(shape)


def weight_value(name: str, t: Tensor, seed: int) -> Tensor | None:
    """The recipe's value for state_dict entry `name`; None keeps the built value (the head's fixed
    `code_weights`, BatchNorm's integer counters)."""
    key = f"{seed}/{name}"
    leaf = name.rsplit(".", 1)[-1]
    if not t.is_floating_point() or name.endswith("code_weights"):
        return None
    if leaf == "running_var":
        return (0.75 + 0.5 * hashed_uniform(key, t.numel()).reshape(t.shape)).float()
    if leaf == "running_mean":
        return (0.1 * centered(key, t.shape)).float()
    if t.dim() >= 2:
        # Matrices ~ 1 / fan_in variance so activations stay O(1); embeddings (tables) unit variance.
        fan_in = 1 if ("embedding" in name or "embeds" in name) else t[0].numel()
        return (centered(key, t.shape) / fan_in**0.5).float()
    if leaf == "weight":
        return (1 + 0.1 * centered(key, t.shape)).float()
    return (0.02 * centered(key, t.shape)).float()


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fx) -> VAD:
    torch.manual_seed(0)
    net = VAD(dataclasses.replace(vad_tiny(), **fx["config"]))
    weights = {}
    for name, t in net.state_dict().items():
        value = weight_value(name, t, fx["weight_seed"])
        weights[name] = t if value is None else value
    net.load_state_dict(weights, strict=True)
    return net.eval()


def _frame(f: dict, hw: tuple[int, int]) -> CameraFrame:
    images = centered(f["image_key"], (1, 6, 3, *hw)).float()
    return CameraFrame(images, f["lidar2img"][None], f["can_bus"][None])


def _targets(fx: dict) -> VADTargets:
    t = fx["targets"]
    mgt = prepare_map_gt([p.numpy() for p in t["polylines"]], t["map_labels"].tolist())
    return VADTargets(
        boxes=[t["boxes"]],
        labels=[t["labels"]],
        agent_fut_trajs=[t["fut_trajs"]],
        agent_fut_masks=[t["fut_masks"]],
        map=[mgt],
        ego_fut_trajs=t["ego_fut_trajs"],
        ego_fut_masks=t["ego_fut_masks"],
        ego_fut_cmd=t["ego_fut_cmd"],
    )


def _assert_close_rel(ours: Tensor, official: Tensor, name: str) -> None:
    """|ours - official| <= RTOL * max|official| (relative to the tensor's scale, as the parity figures)."""
    scale = float(official.abs().max())
    diff = float((ours.detach() - official).abs().max())
    assert diff <= RTOL * scale + 1e-12, (
        f"{name}: max abs diff {diff:.3g}, {diff / max(scale, 1e-30):.3g} relative"
    )


def test_the_weights_are_the_ones_the_official_model_ran_with(fx, model):
    state = model.state_dict()
    assert sorted(state) == sorted(fx["weight_names"])  # the official state_dict's names
    sums = torch.tensor(
        [float(state[name].double().sum()) for name in fx["weight_names"]], dtype=torch.float64
    )
    torch.testing.assert_close(sums, fx["weight_sums"], rtol=1e-9, atol=1e-9)


def test_a_scene_played_frame_by_frame_gives_the_official_outputs(fx, model):
    """Frame 1 starts the scene, frame 2 moves and turns the ego (previous BEV shifted and rotated),
    frame 3 is another scene (previous BEV dropped)."""
    assert [f["scene"] for f in fx["frames"]] == ["a", "a", "b"]
    state = None
    for i, (f, official) in enumerate(zip(fx["frames"], fx["outputs"], strict=True)):
        out, state = model.forward_test(_frame(f, fx["image_hw"]), f["scene"], state)
        for name in OUTPUT_NAMES:
            _assert_close_rel(getattr(out, name), official[name], f"frame {i} {name}")


def test_a_training_step_gives_the_official_loss_terms(fx, model):
    queue = [_frame(f, fx["image_hw"]) for f in fx["queue"]]
    model.train()
    try:
        out = model.forward_train(queue[-1], queue[:-1])
        terms = vad_losses(out, _targets(fx), model.cfg)
    finally:
        model.eval()
    assert sorted(terms) == sorted(k for k in fx["losses"] if not k.endswith(OMITTED))
    for name, term in terms.items():
        official = fx["losses"][name]
        assert official > 0, name  # the fixture's seed makes every term non-zero
        _assert_close_rel(term.value, official, name)
