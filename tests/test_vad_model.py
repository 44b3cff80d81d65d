"""The compact VAD: recipe forwards, decoding, BEV shift hooks, losses on hand cases, the dataset."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from netroller.data.dataset import SampleDataset, collate
from netroller.data.index import read_index
from netroller.errors import ConfigError
from netroller.models.vad.batch import VADInputs, VADTargets
from netroller.models.vad.box_coder import decode_boxes, encode_boxes
from netroller.models.vad.config import VADConfig, debug, vad_base, vad_tiny
from netroller.models.vad.losses import boundary_loss, collision_loss, direction_loss, planning_loss, vad_loss
from netroller.models.vad.matching import focal_cost, hungarian, map_permutations, map_points_cost
from netroller.models.vad.model import VAD
from netroller.models.vad.outputs import VADOutputs, decode


def random_inputs(cfg: VADConfig, batch: int = 1) -> VADInputs:
    w, h = cfg.image_size
    l2i = torch.zeros(batch, 6, 4, 4)
    for n in range(6):
        yaw = n * math.pi / 3
        rot = torch.tensor(
            [[math.cos(yaw), -math.sin(yaw), 0.0], [0.0, 0.0, -1.0], [math.sin(yaw), math.cos(yaw), 0.0]]
        )
        intr = torch.tensor([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]])
        l2i[:, n, :3, :3] = intr @ rot
        l2i[:, n, 3, 3] = 1
    g = torch.Generator().manual_seed(0)
    return VADInputs(
        images=torch.randn(batch, 6, 3, h, w, generator=g),
        lidar_to_image=l2i,
        command=torch.arange(batch) % 3,
        ego_velocity=torch.randn(batch, 2, generator=g),
    )


def check_shapes(cfg: VADConfig, out: VADOutputs, b: int) -> None:
    a, v = cfg.num_agent_queries, cfg.num_map_vectors
    assert out.det_logits.shape == (b, a, cfg.num_det_classes)
    assert out.det_boxes.shape == (b, a, 10)
    assert out.motion_traj.shape == (b, a, cfg.fut_modes, cfg.fut_steps, 2)
    assert out.motion_logits.shape == (b, a, cfg.fut_modes)
    assert out.map_logits.shape == (b, v, cfg.num_map_classes)
    assert out.map_points.shape == (b, v, cfg.map_points, 2)
    assert out.plan.shape == (b, cfg.ego_modes, cfg.fut_steps, 2)
    assert out.bev.shape == (b, cfg.bev_h * cfg.bev_w, cfg.embed_dims)


@pytest.mark.parametrize("make", [debug, vad_tiny], ids=["debug", "vad-tiny"])
def test_recipe_forward_has_contract_shapes(make):
    cfg = make()
    torch.manual_seed(0)
    with torch.no_grad():
        out = VAD(cfg).eval()(random_inputs(cfg, 2 if make is debug else 1))
    check_shapes(cfg, out, 2 if make is debug else 1)


@pytest.mark.slow
def test_vad_base_forward_has_contract_shapes():
    cfg = vad_base()
    torch.manual_seed(0)
    with torch.no_grad():
        out = VAD(cfg).eval()(random_inputs(cfg))
    check_shapes(cfg, out, 1)


def test_config_rejects_dims_not_divisible_by_heads():
    with pytest.raises(ConfigError, match="embed_dims"):
        dataclasses.replace(debug(), embed_dims=66)


def test_box_coding_round_trips():
    boxes = torch.tensor([[1.0, -20.0, 0.5, 1.9, 4.5, 1.6, -2.5, 3.0, -1.0]])
    assert torch.allclose(
        decode_boxes(encode_boxes(boxes, debug().pc_range), debug().pc_range), boxes, atol=1e-5
    )


class AddConstant:
    def __init__(self, where: str):
        self.where = where

    def query(self, bev_queries):
        return bev_queries + 1.0 if self.where == "query" else bev_queries

    def feature(self, bev):
        return bev + 1.0 if self.where == "feature" else bev


class Identity:
    def query(self, bev_queries):
        return bev_queries

    def feature(self, bev):
        return bev


@pytest.fixture(scope="module")
def debug_model():
    torch.manual_seed(0)
    return VAD(debug()).eval()


@pytest.mark.parametrize("where", ["query", "feature"])
def test_constant_bev_shift_changes_outputs(debug_model, where):
    x = random_inputs(debug_model.cfg, 2)
    with torch.no_grad():
        plain, shifted = debug_model(x), debug_model(x, AddConstant(where))
    assert not torch.allclose(plain.plan, shifted.plan)
    assert not torch.allclose(plain.bev, shifted.bev)


def test_identity_bev_shift_gives_identical_outputs(debug_model):
    x = random_inputs(debug_model.cfg, 2)
    with torch.no_grad():
        plain, same = debug_model(x), debug_model(x, Identity())
    for f in ("det_logits", "det_boxes", "motion_traj", "map_points", "plan", "bev"):
        assert torch.equal(getattr(plain, f), getattr(same, f))


def test_decode_gives_numpy_predictions_with_the_commands_plan(debug_model, vad_index):
    ds = SampleDataset(read_index(vad_index), "train", image_size=debug_model.cfg.image_size)
    batch = collate([ds[0], ds[1]])
    batch.inputs.command = torch.tensor([0, 1])
    with torch.no_grad():
        out = debug_model(batch.inputs)
    preds = decode(out, batch, max_boxes=7)
    assert [p.sample_token for p in preds] == ["tok0", "tok1"]
    p = preds[1]
    assert p.boxes.shape == (7, 9) and p.scores.shape == (7,) and p.labels.shape == (7,)
    assert p.agent_fut_traj.shape == (7, 6, 6, 2) and np.allclose(p.agent_fut_scores.sum(-1), 1, atol=1e-5)
    assert p.map_vectors.shape == (20, 20, 2) and np.all(np.diff(p.map_scores) <= 0)
    assert np.allclose(p.plan_traj, out.plan[1, 1].numpy())


def test_hungarian_finds_the_right_permutation():
    labels = torch.tensor([2, 0, 1])
    logits = torch.full((4, 3), -5.0)
    logits[3, 2] = logits[0, 0] = logits[2, 1] = 5.0  # query 3 -> class 2, 0 -> 0, 2 -> 1
    rows, cols = hungarian(focal_cost(logits, labels))
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 3, 1: 0, 2: 2}


def line(x: float) -> torch.Tensor:
    return torch.stack([torch.full((20,), x), torch.linspace(0.1, 0.9, 20)], -1)


def test_reversed_gt_line_gives_zero_point_cost():
    gt = line(0.3)[None]
    orderings, valid = map_permutations(gt)
    cost, _ = map_points_cost(gt.flip(1), orderings, valid)
    assert valid[0].sum() == 2
    assert cost.item() == 0.0


def test_cyclic_shift_of_a_closed_polygon_gives_zero_point_cost():
    t = torch.linspace(0, 2 * math.pi, 20)
    ring = torch.stack([0.5 + 0.1 * t.cos(), 0.5 + 0.1 * t.sin()], -1)  # first == last: closed
    shifted = torch.cat([ring[7:-1], ring[:8]]).flip(0)  # another start, other direction
    orderings, valid = map_permutations(ring[None])
    cost, _ = map_points_cost(shifted[None], orderings, valid)
    assert valid[0].sum() == 38
    assert cost.item() < 1e-6


def make_targets(b: int = 1, **over) -> VADTargets:
    d = dict(
        boxes=[torch.zeros(0, 9)] * b,
        labels=[torch.zeros(0, dtype=torch.long)] * b,
        agent_fut_traj=[torch.zeros(0, 6, 2)] * b,
        agent_fut_mask=[torch.zeros(0, 6)] * b,
        map_vectors=[torch.zeros(0, 20, 2)] * b,
        map_labels=[torch.zeros(0, dtype=torch.long)] * b,
        ego_fut_traj=torch.zeros(b, 6, 2),
        ego_fut_mask=torch.ones(b, 6),
    )
    d.update(over)
    return VADTargets(**d)


def test_planning_l1_uses_the_gt_commands_mode():
    cfg = debug()
    gt = torch.stack([torch.zeros(6), torch.arange(1, 7.0)], -1)[None]
    plan = torch.zeros(1, 3, 6, 2)
    plan[0, 1] = gt[0]  # mode 1 (turn left) is exact, the others are at the origin
    out = VADOutputs(
        *(torch.zeros(1) for _ in range(6)), plan=plan, bev=torch.zeros(1), pc_range=cfg.pc_range
    )
    tgt = make_targets(ego_fut_traj=gt)
    assert planning_loss(out, tgt, torch.tensor([1]), cfg)["plan_reg"].item() == 0.0
    assert planning_loss(out, tgt, torch.tensor([2]), cfg)["plan_reg"].item() > 1.0


def test_collision_loss_penalises_only_agents_within_the_safety_distance():
    plan = torch.stack([torch.zeros(6), torch.arange(1, 7.0)], -1)
    mask = torch.ones(6)
    fut = torch.zeros(1, 6, 2)
    near = torch.tensor([[0.5, 3.0, 0, 2, 4, 1.5, 0, 0, 0]])
    far = torch.tensor([[8.0, 3.0, 0, 2, 4, 1.5, 0, 0, 0]])
    assert collision_loss(plan, mask, near, fut, torch.ones(1, 6), 2.0) > 0
    assert collision_loss(plan, mask, far, fut, torch.ones(1, 6), 2.0) == 0


def test_boundary_loss_penalises_points_within_the_margin():
    plan = torch.stack([torch.zeros(6), torch.arange(1, 7.0)], -1)
    vectors = torch.stack([torch.full((20,), 0.5), torch.linspace(-10, 10, 20)], -1)[None]  # x = 0.5 m
    near = boundary_loss(plan, torch.ones(6), vectors, torch.tensor([2]), 1.0)
    as_divider = boundary_loss(plan, torch.ones(6), vectors, torch.tensor([0]), 1.0)
    assert near > 0 and as_divider == 0


def test_direction_loss_is_zero_along_the_divider_either_way():
    plan = torch.stack([torch.zeros(6), torch.arange(1, 7.0)], -1)
    divider = torch.stack([torch.full((20,), 0.5), torch.linspace(-10, 10, 20)], -1)[None]
    labels = torch.tensor([0])
    assert direction_loss(plan, torch.ones(6), divider, labels, 2.0) < 1e-6
    assert direction_loss(plan, torch.ones(6), divider.flip(1), labels, 2.0) < 1e-6
    sideways = torch.stack([torch.arange(1, 7.0) * 0.3, torch.arange(1, 7.0)], -1)
    assert direction_loss(sideways, torch.ones(6), divider, labels, 2.0) > 0.01


def test_dataset_resizes_images_and_keeps_boxes_in_range(vad_index):
    index = read_index(vad_index)
    ds = SampleDataset(index, "train", image_size=(128, 72))
    s = ds[0]
    assert len(ds) == 4
    assert s.images.shape == (6, 3, 72, 128)
    assert s.boxes.shape == (2, 9)  # the box at y = 40 m is outside the BEV range
    # The resized projection maps the front camera's optical axis to the resized image centre.
    point = torch.tensor([0.0, 10.0, 0.3, 1.0])
    uvw = s.lidar_to_image[0] @ point
    assert torch.allclose(uvw[:2] / uvw[2], torch.tensor([64.0, 36.0]), atol=1e-3)


def test_losses_decrease_over_a_few_steps(vad_index):
    cfg = debug()
    torch.manual_seed(0)
    model = VAD(cfg)
    ds = SampleDataset(read_index(vad_index), "train", image_size=cfg.image_size)
    batch = collate([ds[0], ds[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(6):
        losses = vad_loss(model(batch.inputs), batch.targets, batch.inputs.command, cfg)
        assert set(losses) >= {
            "det_cls",
            "det_box",
            "motion_reg",
            "map_cls",
            "map_pts",
            "plan_reg",
            "plan_col",
            "total",
        }
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        totals.append(losses["total"].item())
    assert totals[-1] < 0.8 * totals[0]
