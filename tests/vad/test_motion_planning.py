"""VAD's motion prediction and planning part of the head, against a fixture recorded from the official
`VADHead.forward` (tests/fixtures/vad/README.md says how it was made), and the official masking rules."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig, debug, vad_tiny
from netroller.models.vad.motion_planning_head import (
    MotionPlanningHead,
    MotionPrediction,
    map_keys_per_mode,
    nearest_point,
    select_by_score,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vad"
# The official VAD-Tiny head's tensors of this part (`_init_layers` from `motion_decoder` on, plus the
# trajectory branches), measured on the official model.
OFFICIAL_TINY_TENSORS = 98
OFFICIAL_TINY_PARAMETERS = 4_668_849


@pytest.fixture(scope="module")
def recorded() -> dict:
    return torch.load(FIXTURES / "motion_planning_parity.pt", weights_only=True)


def _recorded_head(recorded: dict) -> MotionPlanningHead:
    sizes = recorded["sizes"]
    cfg = dataclasses.replace(
        vad_tiny(), embed_dims=sizes["embed_dims"], ffn_dims=sizes["ffn_dims"], num_heads=sizes["num_heads"]
    )
    head = MotionPlanningHead(cfg).eval()
    head.load_state_dict({k: v.float() for k, v in recorded["state_dict"].items()}, strict=True)
    return head


def _run(head: MotionPlanningHead, x: dict[str, torch.Tensor]) -> tuple[MotionPrediction, torch.Tensor]:
    with torch.no_grad():
        motion = head.predict_motion(
            x["agent_feats"], x["agent_xy"], x["map_feats"], x["map_logits"], x["map_pts"]
        )
        plan = head.plan(
            motion.mode_feats, x["agent_logits"], x["agent_xy"], x["map_feats"], x["map_logits"], x["map_pts"]
        )
    return motion, plan


def _scene(cfg: VADConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sample: agent 0 far from every map instance, agent 1 beside instance 0; four confident map
    instances near the normalised origin (x_min, y_min corner), 20 points each."""
    g = torch.Generator().manual_seed(seed)
    c, v, p = cfg.embed_dims, 4, 20
    start = torch.tensor([[0.10, 0.10], [0.15, 0.25], [0.30, 0.12], [0.25, 0.30]])
    pts = start[:, None] + torch.linspace(0, 0.1, p)[None, :, None] * torch.tensor([1.0, 0.5])
    return {
        "agent_feats": torch.randn(1, 2, c, generator=g),
        "agent_logits": torch.full((1, 2, cfg.num_classes), 1.0),
        "agent_xy": torch.tensor([[[0.95, 0.95], [0.12, 0.08]]]),
        "map_feats": torch.randn(1, v * p, c, generator=g),
        "map_logits": torch.full((1, v, cfg.map_num_classes), 3.0),
        "map_pts": pts[None],
    }


def _debug_head(seed: int = 0) -> MotionPlanningHead:
    torch.manual_seed(seed)
    head = MotionPlanningHead(debug()).eval()
    head.init_weights()
    return head


def test_motion_and_plan_equal_the_official_head(recorded):
    motion, plan = _run(_recorded_head(recorded), recorded["inputs"])
    ours = {"traj_preds": motion.traj_preds, "traj_cls_scores": motion.traj_cls_scores, "ego_fut_preds": plan}
    for name, theirs in recorded["outputs"].items():
        torch.testing.assert_close(ours[name], theirs, rtol=1e-4, atol=1e-6, msg=name)


def test_attention_masks_equal_the_official_masks(recorded):
    head, x = _recorded_head(recorded), recorded["inputs"]
    masks = recorded["masks"]
    with torch.no_grad():
        lanes = head.lane_encoder(x["map_feats"].reshape(*x["map_pts"].shape[:3], -1))
    _, _, motion_mask = map_keys_per_mode(
        x["agent_xy"], lanes, x["map_logits"], x["map_pts"], head.fut_mode, head.map_thresh, head.dis_thresh
    )
    assert torch.equal(motion_mask, masks["motion_map_mask"])
    # The fixture takes both branches: seen and unseen instances, queries that see only the empty one.
    assert motion_mask[:, :-1].any() and not motion_mask[:, :-1].all()
    assert motion_mask[:, :-1].all(dim=1).any()
    _, _, agent_mask = select_by_score(x["agent_feats"], x["agent_xy"], x["agent_logits"], head.query_thresh)
    _, _, map_mask = select_by_score(lanes, nearest_point(x["map_pts"]), x["map_logits"], head.query_thresh)
    assert torch.equal(agent_mask, masks["ego_agent_mask"]) and agent_mask.any()
    assert torch.equal(map_mask, masks["ego_map_mask"]) and map_mask.any()


def test_an_agent_far_from_every_map_instance_reads_only_the_empty_instance():
    cfg = debug()
    head = _debug_head()
    x = _scene(cfg)
    other = dict(x, map_feats=torch.randn(x["map_feats"].shape, generator=torch.Generator().manual_seed(1)))
    (m1, _), (m2, _) = _run(head, x), _run(head, other)
    # Agent 0 (far): its futures do not depend on the map; agent 1 (near instance 0) reads it.
    torch.testing.assert_close(m1.traj_preds[:, 0], m2.traj_preds[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(m1.traj_cls_scores[:, 0], m2.traj_cls_scores[:, 0], rtol=0, atol=0)
    assert not torch.allclose(m1.traj_preds[:, 1], m2.traj_preds[:, 1])
    lanes = torch.zeros(1, 4, cfg.embed_dims)
    _, pos, mask = map_keys_per_mode(
        x["agent_xy"], lanes, x["map_logits"], x["map_pts"], head.fut_mode, head.map_thresh, head.dis_thresh
    )
    far_rows = slice(0, head.fut_mode)  # rows are agent-major: agent 0's modes first
    assert mask[far_rows, :-1].all() and not mask[far_rows, -1].any()
    # The empty instance sits at (1, 1) in every query's frame; the others are relative to the agent.
    assert torch.equal(pos[:, -1], torch.ones(2 * head.fut_mode, 2))
    torch.testing.assert_close(pos[head.fut_mode, 0], x["map_pts"][0, 0, 0] - x["agent_xy"][0, 1])


def test_a_map_instance_below_map_thresh_is_hidden_from_motion_but_seen_by_the_planner():
    head = _debug_head()
    x = _scene(debug())
    x["map_logits"][0, 0] = -1.0  # sigmoid 0.27: under map_thresh 0.5, over query_thresh 0.0
    feats = x["map_feats"].clone()
    feats[0, :20] = torch.randn(20, feats.shape[-1], generator=torch.Generator().manual_seed(2))  # instance 0
    (m1, p1), (m2, p2) = _run(head, x), _run(head, dict(x, map_feats=feats))
    torch.testing.assert_close(m1.traj_preds, m2.traj_preds, rtol=0, atol=0)
    assert not torch.allclose(p1, p2)


def test_select_by_score_keeps_the_order_and_pads_with_zero_tokens_at_the_origin():
    tokens = torch.arange(1.0, 9.0).view(2, 4, 1)
    pos = tokens.expand(2, 4, 2) + 0.5
    logits = torch.tensor([[[3.0], [-3.0], [2.0], [1.0]], [[-3.0], [4.0], [-3.0], [-3.0]]])
    kept, kept_pos, pad = select_by_score(tokens, pos, logits, 0.5)
    assert kept.squeeze(-1).tolist() == [[1.0, 3.0, 4.0], [6.0, 0.0, 0.0]]
    assert kept_pos[1].tolist() == [[6.5, 6.5], [0.0, 0.0], [0.0, 0.0]]
    assert pad.tolist() == [[False, False, False], [False, True, True]]


def test_an_instance_stands_at_its_point_nearest_the_normalised_origin():
    pts = torch.tensor([[[[0.5, 0.5], [0.2, 0.1], [0.1, 0.3], [0.9, 0.0]]]])
    assert torch.equal(nearest_point(pts), pts[:, :, 1])


def test_output_shapes_follow_the_config():
    cfg = debug()
    head = _debug_head()
    motion, plan = _run(head, _scene(cfg))
    assert motion.traj_preds.shape == (1, 2, cfg.fut_mode, cfg.fut_ts * 2)
    assert motion.traj_cls_scores.shape == (1, 2, cfg.fut_mode)
    assert motion.mode_feats.shape == (1, 2, cfg.fut_mode, 2 * cfg.embed_dims)
    assert plan.shape == (1, cfg.ego_fut_mode, cfg.fut_ts, 2)


def test_init_weights_sets_the_official_starts():
    head = _debug_head()
    bias = head.traj_cls_branches[0][-1].bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99.0)))
    assert not head.pos_mlp_sa.bias.any() and not head.pos_mlp.bias.any()
    modes = head.motion_mode_query.weight
    torch.testing.assert_close(modes @ modes.T, torch.eye(modes.shape[0]), rtol=0, atol=1e-5)


def test_vad_tiny_part_has_the_official_tensor_and_parameter_counts():
    state = MotionPlanningHead(vad_tiny()).state_dict()
    assert len(state) == OFFICIAL_TINY_TENSORS
    assert sum(v.numel() for v in state.values()) == OFFICIAL_TINY_PARAMETERS


def test_vad_tiny_names_and_shapes_equal_the_official_pts_bbox_head_entries():
    path = FIXTURES / "state_dict_tiny.json"
    if not path.exists():
        pytest.skip(f"{path} not recorded")
    official = json.loads(path.read_text())["tensors"]
    ours = {
        f"pts_bbox_head.{k}": list(v.shape) for k, v in MotionPlanningHead(vad_tiny()).state_dict().items()
    }
    parts = {k.split(".")[1] for k in ours}
    theirs = {
        k: v for k, v in official.items() if k.startswith("pts_bbox_head.") and k.split(".")[1] in parts
    }
    assert ours == theirs


def test_odd_embed_dims_are_refused():
    cfg = dataclasses.replace(debug(), embed_dims=33, num_heads=3)
    with pytest.raises(ConfigError, match="embed_dims must be even"):
        MotionPlanningHead(cfg)
