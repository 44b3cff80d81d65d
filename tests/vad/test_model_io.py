"""VAD as the pipeline uses it: the dataset's official conventions, the NetRoller shift points, decoding into
the index's conventions, and training that lowers the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from netroller.data.dataset import SampleDataset, collate
from netroller.data.index import read_index
from netroller.models.vad.config import debug
from netroller.models.vad.detector import VAD
from netroller.models.vad.losses import loss_sum, vad_losses
from netroller.models.vad.predictions import decode, plan_positions


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
def model() -> VAD:
    torch.manual_seed(0)
    return VAD(debug()).eval()


@pytest.fixture(scope="module")
def batch(vad_index):
    ds = SampleDataset(read_index(vad_index), "train", vad=debug(), train=False)
    return collate([ds[1]])


def test_dataset_gives_padded_images_scaled_projections_and_official_targets(vad_index):
    cfg = debug()
    ds = SampleDataset(read_index(vad_index), "train", vad=cfg, train=False)
    s, record = ds[0], ds.records[0]
    # 240x135 scaled by 0.1 is 24x14 (rounded), zero-padded to 32x32.
    assert s.frame.images.shape == (6, 3, 32, 32) and s.history == []
    point = torch.tensor([0.0, 10.0, 0.3, 1.0])
    uvw = s.frame.lidar2img[0] @ point
    assert torch.allclose(uvw[:2] / uvw[2], torch.tensor([12.0, 6.75]), atol=1e-3)
    # The box at y = 40 m is outside the range; VAD's yaw is -yaw - pi/2.
    assert s.boxes.shape == (2, 9)
    assert float(s.boxes[0, 6]) == pytest.approx(-0.3 - math.pi / 2)
    # Futures become per-step offsets: constant velocity 2 m/s along y -> 1 m per 0.5 s step.
    assert torch.allclose(s.agent_fut_trajs[0], torch.tensor([[0.0, 1.0]] * 6))
    np.testing.assert_allclose(s.ego_fut_trajs.cumsum(0).numpy(), record.ego_fut_traj, atol=1e-6)


def test_training_samples_carry_a_seeded_history_queue(vad_index):
    cfg = debug()
    ds = SampleDataset(read_index(vad_index), "train", vad=cfg, train=True, seed=1)
    a, b = ds[2], ds[2]
    assert len(a.history) == cfg.queue_length - 1
    assert torch.equal(a.frame.images, b.frame.images)  # same (seed, epoch, sample): same draws
    ds.set_epoch(1)
    assert not torch.equal(ds[2].frame.images, a.frame.images)  # photometric distortion redrawn


@pytest.mark.parametrize("where", ["query", "feature"])
def test_a_constant_bev_shift_changes_the_outputs(model, batch, where):
    f = batch.inputs.frame
    with torch.no_grad():
        plain, shifted = model.forward_train(f, []), model.forward_train(f, [], AddConstant(where))
    assert not torch.allclose(plain.ego_fut_preds, shifted.ego_fut_preds)
    assert not torch.allclose(plain.bev_embed, shifted.bev_embed)


def test_an_identity_bev_shift_gives_identical_outputs(model, batch):
    f = batch.inputs.frame
    with torch.no_grad():
        plain, same = model.forward_train(f, []), model.forward_train(f, [], Identity())
    for name in ("all_cls_scores", "all_bbox_preds", "all_traj_preds", "map_all_pts_preds", "ego_fut_preds"):
        assert torch.equal(getattr(plain, name), getattr(same, name))


def test_decode_gives_index_convention_predictions_with_the_commands_plan(model, batch):
    with torch.no_grad():
        out = model.forward_train(batch.inputs.frame, [])
    command = torch.tensor([1])
    (p,) = decode(out, batch.sample_tokens, command, model.cfg)
    assert p.sample_token == "tok1"
    k = len(p.scores)
    assert 0 < k <= model.cfg.max_boxes and p.boxes.shape == (k, 9) and np.all(np.diff(p.scores) <= 0)
    assert p.agent_fut_traj.shape == (k, 6, 6, 2) and np.allclose(p.agent_fut_scores.sum(-1), 1, atol=1e-5)
    assert p.map_vectors.shape[1:] == (20, 2) and len(p.map_vectors) <= model.cfg.max_map
    np.testing.assert_allclose(p.plan_traj, out.ego_fut_preds[0, 1].cumsum(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(plan_positions(out, command)[0].numpy(), p.plan_traj)


def test_losses_decrease_over_a_few_steps(vad_index):
    cfg = debug()
    torch.manual_seed(0)
    model = VAD(cfg).train()
    ds = SampleDataset(read_index(vad_index), "train", vad=cfg, train=True)
    batch = collate([ds[0], ds[1]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(6):
        terms = vad_losses(model.forward_train(batch.inputs.frame, batch.inputs.history), batch.targets, cfg)
        assert {
            "loss_cls",
            "loss_bbox",
            "loss_traj",
            "loss_map_pts",
            "loss_plan_reg",
            "loss_plan_col",
        } <= set(terms)
        loss = loss_sum(terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.8 * totals[0]
