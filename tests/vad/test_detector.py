"""The detector's time handling: the previous BEV carried through a scene and dropped at a scene start, the
CAN-bus deltas, and the training queue."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from netroller.models.vad.config import debug
from netroller.models.vad.detector import VAD, CameraFrame, can_bus_delta


@pytest.fixture(scope="module")
def model() -> VAD:
    torch.manual_seed(0)
    return VAD(dataclasses.replace(debug(), num_query=10, map_num_vec=4)).eval()


def frame(seed: int, x: float = 0.0, yaw_deg: float = 0.0) -> CameraFrame:
    g = torch.Generator().manual_seed(seed)
    can_bus = torch.zeros(1, 18, dtype=torch.float64)
    can_bus[0, 0], can_bus[0, -2], can_bus[0, -1] = x, yaw_deg * torch.pi / 180, yaw_deg
    l2i = torch.eye(4).repeat(1, 6, 1, 1)
    l2i[..., 0, 2] = 8.0  # a projection that sees the BEV in front of each camera
    return CameraFrame(torch.randn(1, 6, 3, 32, 64, generator=g), l2i, can_bus)


def test_can_bus_delta_is_zero_without_a_previous_frame_and_relative_with_one():
    a, b = frame(0, x=10.0, yaw_deg=30.0).can_bus, frame(1, x=12.5, yaw_deg=33.0).can_bus
    assert float(can_bus_delta(a, None)[0, 0]) == 0 and float(can_bus_delta(a, None)[0, -1]) == 0
    d = can_bus_delta(b, a)
    assert float(d[0, 0]) == pytest.approx(2.5) and float(d[0, -1]) == pytest.approx(3.0)
    assert float(d[0, -2]) == pytest.approx(33.0 * torch.pi / 180)  # the absolute yaw stays


def test_the_previous_bev_is_used_within_a_scene_and_dropped_at_a_scene_start(model):
    first, second = frame(0), frame(1, x=1.0)
    _, state = model.forward_test(first, "scene-a", None)
    alone, _ = model.forward_test(second, "scene-a", None)
    carried, _ = model.forward_test(second, "scene-a", state)
    restarted, _ = model.forward_test(second, "scene-b", state)
    assert not torch.allclose(carried.ego_fut_preds, alone.ego_fut_preds)
    assert torch.equal(restarted.ego_fut_preds, alone.ego_fut_preds)
    assert torch.equal(restarted.bev_embed, alone.bev_embed)


def test_the_state_keeps_the_absolute_can_bus_and_the_new_bev(model):
    f = frame(2, x=4.0, yaw_deg=10.0)
    out, state = model.forward_test(f, "scene-a", None)
    assert (
        torch.equal(state.can_bus, f.can_bus)
        and state.bev is out.bev_embed
        and state.scene_token == "scene-a"
    )


def test_forward_test_takes_one_frame_at_a_time(model):
    f = frame(0)
    two = CameraFrame(f.images.repeat(2, 1, 1, 1, 1), f.lidar2img.repeat(2, 1, 1, 1), f.can_bus.repeat(2, 1))
    with pytest.raises(ValueError, match="batch 1"):
        model.forward_test(two, "scene-a", None)


def test_the_training_queue_gives_what_playing_the_frames_in_order_gives(model):
    past, now = frame(3), frame(4, x=2.0, yaw_deg=5.0)
    trained = model.forward_train(now, [past])
    _, state = model.forward_test(past, "s", None)
    played, _ = model.forward_test(now, "s", state)
    torch.testing.assert_close(trained.ego_fut_preds, played.ego_fut_preds)
    torch.testing.assert_close(trained.all_cls_scores, played.all_cls_scores)


def test_the_training_queue_has_no_gradient_and_restores_the_mode(model):
    past, now = frame(5), frame(6)
    past.images.requires_grad_(True)
    now.images.requires_grad_(True)
    model.train()
    try:
        model.forward_train(now, [past]).ego_fut_preds.sum().backward()
        assert model.training
        assert past.images.grad is None and now.images.grad is not None
    finally:
        model.zero_grad()
        model.eval()
