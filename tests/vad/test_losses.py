"""VAD's losses, assigners, map targets and NMS-free decoding against the official code's results recorded in
tests/fixtures/vad/losses.pt (see the README there), plus hand cases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from netroller.models.vad.assigners import assign_boxes, assign_map
from netroller.models.vad.coders import decode_detections, decode_map, encode_boxes
from netroller.models.vad.config import vad_tiny
from netroller.models.vad.losses import LossTerm, loss_sum, vad_losses
from netroller.models.vad.map_targets import PADDING_VALUE, prepare_map_gt
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.targets import VADTargets, agent_futures_from_attr_labels

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vad" / "losses.pt"
OMITTED = ("loss_map_bbox", "loss_map_iou")  # weight 0 in the configs


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def _cfg(fx):
    o = fx["outputs"]
    return dataclasses.replace(
        vad_tiny(),
        num_query=o["all_cls_scores"].shape[2],
        map_num_vec=o["map_all_cls_scores"].shape[2],
        det_layers=o["all_cls_scores"].shape[0],
        map_layers=o["map_all_cls_scores"].shape[0],
        max_boxes=fx["max_boxes"],
        max_map=fx["max_map"],
    )


def _outputs(fx, grad=False) -> VADOutputs:
    return VADOutputs(
        **{k: v.clone().requires_grad_(grad and k != "bev_embed") for k, v in fx["outputs"].items()}
    )


def _targets(fx) -> VADTargets:
    gt = fx["gt"]
    rng = np.random.RandomState(fx["map_seed"])
    maps = [
        prepare_map_gt([p.numpy() for p in polys], labels.tolist(), rng=rng)
        for polys, labels in zip(gt["polylines"], gt["map_labels"], strict=True)
    ]
    return VADTargets(
        boxes=gt["boxes"],
        labels=gt["labels"],
        agent_fut_trajs=gt["fut_trajs"],
        agent_fut_masks=gt["fut_masks"],
        map=maps,
        ego_fut_trajs=gt["ego_fut_trajs"],
        ego_fut_masks=gt["ego_fut_masks"],
        ego_fut_cmd=gt["ego_fut_cmd"],
    )


def test_map_targets_equal_official_dataset_class(fx):
    for ours, official in zip(_targets(fx).map, fx["official_map_gt"], strict=True):
        torch.testing.assert_close(ours.boxes, official["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(ours.points, official["points"], rtol=0, atol=0)
        torch.testing.assert_close(ours.shifts, official["shifts"], rtol=0, atol=0)


def test_every_official_term_is_returned(fx):
    terms = vad_losses(_outputs(fx), _targets(fx), _cfg(fx))
    expected = [k for k in fx["official_losses"] if not k.endswith(OMITTED)]
    assert sorted(terms) == sorted(expected)


def test_loss_values_equal_official(fx):
    terms = vad_losses(_outputs(fx), _targets(fx), _cfg(fx))
    for name, term in terms.items():
        official = fx["official_losses"][name]
        assert official.abs() > 0, name  # the fixture exercises every term
        torch.testing.assert_close(term.value, official, rtol=1e-5, atol=1e-7, msg=name)


def test_gradients_equal_official(fx):
    out = _outputs(fx, grad=True)
    loss_sum(vad_losses(out, _targets(fx), _cfg(fx))).backward()
    for name, official in fx["official_grads"].items():
        # Only the omitted zero-weight terms read the map boxes: the official gradient there is 0.
        grad = getattr(out, name).grad
        grad = torch.zeros_like(official) if grad is None else grad
        torch.testing.assert_close(grad, official, rtol=1e-5, atol=1e-6, msg=name)


def test_decoding_equals_official_get_bboxes(fx):
    cfg = _cfg(fx)
    dets, maps = decode_detections(_outputs(fx), cfg), decode_map(_outputs(fx), cfg)
    for det, mp, official in zip(dets, maps, fx["official_decoded"], strict=True):
        np.testing.assert_allclose(det.boxes, official["boxes"].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(det.scores, official["scores"].numpy())
        np.testing.assert_array_equal(det.labels, official["labels"].numpy())
        np.testing.assert_array_equal(det.trajs, official["trajs"].numpy())
        np.testing.assert_allclose(mp.boxes, official["map_boxes"].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(mp.scores, official["map_scores"].numpy())
        np.testing.assert_array_equal(mp.labels, official["map_labels"].numpy())
        np.testing.assert_allclose(mp.points, official["map_pts"].numpy(), rtol=1e-6, atol=1e-6)
    # The fixture has a box and a map vector outside the post-centre range: the filter ran.
    assert len(dets[0].scores) < cfg.max_boxes and len(maps[1].scores) < cfg.max_map


def test_value_is_total_over_count(fx):
    for name, term in vad_losses(_outputs(fx), _targets(fx), _cfg(fx)).items():
        assert term.count >= 1, name
        torch.testing.assert_close(term.value, term.total / term.count, msg=name)


def _sample(t: VADTargets, i: int) -> VADTargets:
    pick = slice(i, i + 1)
    return VADTargets(
        boxes=t.boxes[pick],
        labels=t.labels[pick],
        agent_fut_trajs=t.agent_fut_trajs[pick],
        agent_fut_masks=t.agent_fut_masks[pick],
        map=t.map[pick],
        ego_fut_trajs=t.ego_fut_trajs[pick],
        ego_fut_masks=t.ego_fut_masks[pick],
        ego_fut_cmd=t.ego_fut_cmd[pick],
    )


def test_summed_totals_over_summed_counts_equal_the_whole_batch(fx):
    """Two workers with one sample each: all-reducing totals and counts and dividing once gives the loss one
    process computes on both samples."""
    cfg, tgt = _cfg(fx), _targets(fx)
    whole = vad_losses(_outputs(fx), tgt, cfg)
    parts = []
    for i in range(tgt.batch_size):
        out = _outputs(fx)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        fields = {
            k: v[:, i : i + 1] if v.ndim >= 3 and k != "ego_fut_preds" else v for k, v in fields.items()
        }
        fields["ego_fut_preds"] = out.ego_fut_preds[i : i + 1]
        parts.append(vad_losses(VADOutputs(**fields), _sample(tgt, i), cfg))
    for name, term in whole.items():
        merged = LossTerm(sum(p[name].total for p in parts), sum(p[name].count for p in parts))
        torch.testing.assert_close(merged.value, term.value, rtol=1e-6, atol=1e-7, msg=name)


def _gt_box(x: float) -> list[float]:
    return [x, 0.0, 0.0, 2.0, 4.0, 1.5, 0.3, 0.0, 0.0]


def test_box_assignment_is_the_minimum_total_cost_not_greedy():
    gt = torch.tensor([_gt_box(0.0), _gt_box(3.0)])
    # Query 0 is nearest GT 0 (cost 1 vs 2), but giving it GT 1 lets query 1 (at x=-3) take GT 0: 2 + 3 < 1 + 6.
    preds = encode_boxes(torch.tensor([_gt_box(1.0), _gt_box(-3.0)]))
    logits = torch.zeros(2, 10)  # equal class costs: only the boxes decide
    match = assign_boxes(logits, preds, gt, torch.tensor([0, 0]), cls_weight=2.0, reg_weight=0.25)
    assert match.pred_idx.tolist() == [0, 1]
    assert match.gt_idx.tolist() == [1, 0]
    assert match.order_idx is None


def test_map_assignment_picks_the_matching_point_order():
    pc_range = vad_tiny().pc_range
    line = np.array([[-5.0, -10.0], [-5.0, 10.0]])
    square = np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 4.0], [1.0, 4.0], [1.0, 1.0]])
    gt = prepare_map_gt([line, square], [0, 1])
    assert (gt.shifts[0, 2:] == PADDING_VALUE).all() and (gt.shifts[1, 4:] == PADDING_VALUE).all()
    # Query 0: the square started at its third vertex; query 1: nothing; query 2: the line reversed.
    far = torch.full((20, 2), 0.9)
    pts = torch.stack([gt.shifts[1, 2], far, gt.shifts[0, 1]])
    pts = (pts - torch.tensor(pc_range[:2])) / torch.tensor([30.0, 60.0])
    match = assign_map(torch.zeros(3, 3), pts, gt.shifts, gt.labels, pc_range, cls_weight=2.0, pts_weight=1.0)
    assert match.pred_idx.tolist() == [0, 2]
    assert match.gt_idx.tolist() == [1, 0]
    assert match.order_idx.tolist() == [2, 1]


def test_decoding_keeps_top_scored_query_class_pairs_in_range():
    cfg = dataclasses.replace(vad_tiny(), num_classes=3, max_boxes=3, max_map=2, fut_mode=1, fut_ts=1)
    logits = torch.tensor([[3.0, -5.0, 1.0], [-5.0, 2.0, -5.0]])  # best pairs: (0, 0), (1, 1), (0, 2)
    boxes = torch.tensor([_gt_box(1.0), _gt_box(30.0)])  # query 1 is outside the x range (+-20 m)
    codes = encode_boxes(boxes)
    z = torch.zeros
    out = VADOutputs(
        bev_embed=z(1, 1, 1),
        all_cls_scores=logits[None, None],
        all_bbox_preds=codes[None, None],
        all_traj_preds=torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])[None, None],
        all_traj_cls_scores=z(1, 1, 2, 1),
        map_all_cls_scores=torch.tensor([[[[0.0, 4.0, -4.0], [-4.0, -4.0, 1.0]]]]),
        map_all_bbox_preds=torch.tensor([[[[0.5, 0.5, 0.2, 0.1], [0.5, 0.5, 0.1, 0.1]]]]),
        map_all_pts_preds=torch.full((1, 1, 2, 20, 2), 0.5),
        ego_fut_preds=z(1, 3, 1, 2),
    )
    (det,) = decode_detections(out, cfg)
    assert det.labels.tolist() == [0, 2]  # (1, 1) was dropped by the range filter
    np.testing.assert_allclose(det.scores, torch.sigmoid(torch.tensor([3.0, 1.0])).numpy())
    expected = boxes[0].clone()
    expected[2] -= expected[5] / 2  # bottom-centred z, as get_bboxes
    np.testing.assert_allclose(det.boxes, torch.stack([expected, expected]).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(det.trajs, np.array([[[1.0, 2.0]], [[1.0, 2.0]]]))
    (mp,) = decode_map(out, cfg)
    assert mp.labels.tolist() == [1, 2]
    np.testing.assert_allclose(mp.boxes[0], [-3.0, -3.0, 3.0, 3.0], atol=1e-5)
    np.testing.assert_allclose(mp.points[0, 0], [0.0, 0.0], atol=1e-6)


def test_a_batch_without_ground_truth_gives_finite_losses(fx):
    tgt = _targets(fx)
    empty = dataclasses.replace(
        tgt,
        boxes=[torch.zeros(0, 9)] * 2,
        labels=[torch.zeros(0, dtype=torch.long)] * 2,
        agent_fut_trajs=[torch.zeros(0, 6, 2)] * 2,
        agent_fut_masks=[torch.zeros(0, 6)] * 2,
        map=[prepare_map_gt([], [])] * 2,
    )
    terms = vad_losses(_outputs(fx), empty, _cfg(fx))
    assert all(torch.isfinite(t.value) for t in terms.values())
    assert terms["loss_bbox"].value == 0 and terms["loss_map_pts"].value == 0
    assert terms["loss_cls"].value > 0  # every query is pushed to background


def test_targets_refuse_mismatched_boxes_and_labels(fx):
    tgt = _targets(fx)
    with pytest.raises(ValueError, match="sample 0: boxes .* do not describe the same N boxes"):
        dataclasses.replace(tgt, labels=[tgt.labels[0][:1], tgt.labels[1]])


def test_targets_refuse_a_command_that_is_not_one_hot(fx):
    with pytest.raises(ValueError, match="ego_fut_cmd must be one-hot"):
        dataclasses.replace(_targets(fx), ego_fut_cmd=torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_map_gt_refuses_a_single_point_polyline():
    with pytest.raises(ValueError, match=r"polyline 0 must be \[n >= 2, 2\]"):
        prepare_map_gt([np.array([[1.0, 2.0]])], [0])


def test_agent_futures_unpack_the_official_attr_labels():
    trajs = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    masks = torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3])
    attr = torch.cat([trajs.reshape(2, 12), masks, torch.full((2, 16), 7.0)], -1)  # + goal, lcf, yaw
    got_trajs, got_masks = agent_futures_from_attr_labels(attr, 6)
    assert torch.equal(got_trajs, trajs) and torch.equal(got_masks, masks)
