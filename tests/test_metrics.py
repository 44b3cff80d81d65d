"""Hand cases for the planning, map and detection metrics (VAD conventions)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from netroller.data.index import DETECTION_CLASSES, MAP_CLASSES, read_index
from netroller.errors import DataError
from netroller.metrics.detection import detection_metrics, eval_set_for, to_submission
from netroller.metrics.map_ap import average_precision, chamfer_matrix, map_ap
from netroller.metrics.planning import plan_collision, plan_l2, rasterize

CAR = DETECTION_CLASSES.index("car")
CONE = DETECTION_CLASSES.index("traffic_cone")
DIVIDER = MAP_CLASSES.index("divider")


@dataclass
class Pred:
    """A hand-built prediction with the fields of `VADPrediction` the metrics read."""

    sample_token: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    map_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 20, 2)))
    map_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    map_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def straight(speed: float = 2.5) -> np.ndarray:
    """(6, 2) positions driving forward (+y) at `speed` metres per 0.5 s step."""
    return np.stack([np.zeros(6), speed * np.arange(1, 7)], axis=-1)


# ---- planning: L2 ----


def test_lateral_offset_of_one_metre_gives_l2_one_at_every_horizon():
    gt = straight()[None]
    pred = gt + np.array([1.0, 0.0])
    out = plan_l2(pred, gt, np.ones((1, 6)))
    for n in (1, 2, 3):
        assert out[f"plan_l2_{n}s"] == pytest.approx(1.0)
        assert out[f"plan_l2_at_{n}s"] == pytest.approx(1.0)


def test_l2_vad_convention_averages_steps_and_uniad_takes_the_last():
    gt = np.zeros((1, 6, 2))
    pred = np.zeros((1, 6, 2))
    pred[0, :, 0] = np.arange(1, 7)  # error grows 1 m per step
    out = plan_l2(pred, gt, np.ones((1, 6)))
    assert out["plan_l2_1s"] == pytest.approx(1.5)
    assert out["plan_l2_at_1s"] == pytest.approx(2.0)
    assert out["plan_l2_3s"] == pytest.approx(3.5)
    assert out["plan_l2_at_3s"] == pytest.approx(6.0)


def test_l2_skips_samples_without_all_future_frames():
    gt = np.zeros((2, 6, 2))
    pred = np.zeros((2, 6, 2))
    pred[1] += 100.0  # would dominate if counted
    mask = np.ones((2, 6))
    mask[1, 5] = 0
    assert plan_l2(pred, gt, mask)["plan_l2_3s"] == pytest.approx(0.0)


# ---- planning: collision ----


def parked_car_sample(plan: np.ndarray, gt_traj: np.ndarray, *, fut_mask: np.ndarray | None = None) -> dict:
    """A car parked 10 m ahead, facing forward (4.5 m long, 2 m wide)."""
    box = np.array([[0.0, 10.0, 0.0, 2.0, 4.5, 1.6, np.pi / 2, 0.0, 0.0]])
    return {
        "plan": plan,
        "gt_traj": gt_traj,
        "gt_mask": np.ones(6),
        "boxes": box,
        "labels": np.array([CAR]),
        "fut_traj": np.zeros((1, 6, 2)),
        "fut_mask": np.ones((1, 6)) if fut_mask is None else fut_mask,
    }


STOP_AT_CAR = np.array([[0.0, 2.5], [0.0, 5.0], [0.0, 7.5], [0.0, 8.0], [0.0, 8.0], [0.0, 8.0]])
STAND_STILL = np.zeros((6, 2))


def test_plan_into_a_parked_car_collides_from_the_step_it_reaches_it():
    # Ego box spans y in [p + 0.5 - 2.04, p + 0.5 + 2.04]; the car starts at y = 7.75: hit from p = 7.5 on.
    out = plan_collision([parked_car_sample(STOP_AT_CAR, STAND_STILL)])
    assert out["plan_col_1s"] == pytest.approx(0.0)
    assert out["plan_col_2s"] == pytest.approx(50.0)
    assert out["plan_col_3s"] == pytest.approx(400.0 / 6)


def test_plan_passing_beside_the_car_does_not_collide():
    beside = STOP_AT_CAR + np.array([4.0, 0.0])
    out = plan_collision([parked_car_sample(beside, STAND_STILL)])
    assert out["plan_col_3s"] == pytest.approx(0.0)


def test_step_where_gt_ego_already_collides_is_skipped():
    gt = STOP_AT_CAR.copy()
    gt[4:] = [0.0, 2.0]  # GT collides only at steps 2 and 3
    out = plan_collision([parked_car_sample(STOP_AT_CAR, gt)])
    assert out["plan_col_2s"] == pytest.approx(0.0)
    assert out["plan_col_3s"] == pytest.approx(200.0 / 6)


def test_agent_masked_at_a_step_is_dropped_there():
    mask = np.ones((1, 6))
    mask[0, 3:] = 0
    out = plan_collision([parked_car_sample(STOP_AT_CAR, STAND_STILL, fut_mask=mask)])
    assert out["plan_col_3s"] == pytest.approx(100.0 / 6)


def test_traffic_cones_are_not_obstacles():
    sample = parked_car_sample(STOP_AT_CAR, STAND_STILL)
    sample["labels"] = np.array([CONE])
    assert plan_collision([sample])["plan_col_3s"] == pytest.approx(0.0)


def test_rasterized_box_is_in_the_lidar_frame_x_right_y_forward():
    # A 2 m x 4 m box 10 m ahead (yaw pi/2: long along y) covers cells around x = 0, y = 10.
    from netroller.metrics.planning import box_corners

    grid = rasterize([box_corners(np.array([0.0, 10.0]), 2.0, 4.0, np.pi / 2)])
    ix, iy = np.nonzero(grid)
    assert grid.sum() == 4 * 8
    assert (-50 + 0.5 * ix.min(), -50 + 0.5 * (ix.max() + 1)) == (-1.0, 1.0)
    assert (-50 + 0.5 * iy.min(), -50 + 0.5 * (iy.max() + 1)) == (8.0, 12.0)


# ---- map AP ----


def line(y: float, x0: float = -10.0, x1: float = 10.0) -> np.ndarray:
    """(20, 2) points of a lateral line at `y`."""
    return np.stack([np.linspace(x0, x1, 20), np.full(20, y)], axis=-1)


def map_case(pred_vectors, pred_scores, gt_vectors) -> dict[str, float]:
    pred = Pred(
        "s0",
        map_vectors=np.asarray(pred_vectors),
        map_scores=np.asarray(pred_scores, dtype=np.float64),
        map_labels=np.full(len(pred_scores), DIVIDER),
    )
    gt = np.asarray(gt_vectors)
    return map_ap([pred], {"s0": gt}, {"s0": np.full(len(gt), DIVIDER)})


def test_identical_vectors_give_map_ap_one():
    out = map_case([line(5.0), line(-5.0)], [0.9, 0.8], [line(5.0), line(-5.0)])
    assert out["map_ap_divider"] == pytest.approx(1.0)
    assert out["map_ap"] == pytest.approx(1.0)  # the other classes have no GT and are left out


def test_vector_two_metres_off_scores_zero_at_every_threshold():
    out = map_case([line(7.0)], [0.9], [line(5.0)])
    for thr in (0.5, 1.0, 1.5):
        assert out[f"map_ap_divider_{thr}"] == 0.0


def test_chamfer_distance_of_a_shifted_line_is_the_shift():
    assert chamfer_matrix(line(7.0)[None], line(5.0)[None])[0, 0] == pytest.approx(2.0)


def test_higher_scored_false_positive_lowers_ap_by_the_precision_it_costs():
    # Ranked: TP (recall .5, precision 1), FP, TP (recall 1, precision 2/3): AP = .5 * 1 + .5 * 2/3.
    out = map_case([line(5.0), line(20.0), line(-5.0)], [0.9, 0.8, 0.7], [line(5.0), line(-5.0)])
    assert out["map_ap_divider"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicate_prediction_of_one_gt_is_a_false_positive():
    out = map_case([line(5.0), line(5.1)], [0.8, 0.9], [line(5.0)])
    # The better-scored duplicate takes the GT first; the exact copy below it is then a false positive.
    assert out["map_ap_divider_0.5"] == pytest.approx(1.0)


def test_average_precision_of_a_miss_ranked_first_is_half():
    assert average_precision(np.array([0.0, 1.0]), np.array([0.9, 0.8]), num_gt=1) == pytest.approx(0.5)


def test_class_without_gt_has_nan_ap_and_stays_out_of_the_mean():
    out = map_case([line(5.0)], [0.9], [line(5.0)])
    assert np.isnan(out["map_ap_boundary"])
    assert out["map_ap"] == pytest.approx(1.0)


# ---- detection (nuscenes-devkit on the synthetic set) ----


@pytest.fixture(scope="module")
def val_records(index_path) -> dict:
    return {r.sample_token: r for r in read_index(index_path).split("val")}


def score_gt_as_predictions(nusc, records: dict, folder, *, shift_x=0.0, extra=None, eval_set="mini_val"):
    """Detection metrics of the GT boxes used as predictions, optionally shifted or with extra car boxes."""
    preds = []
    for token, rec in records.items():
        boxes = rec.gt_boxes.astype(np.float64).copy()
        boxes[:, 0] += shift_x
        labels = rec.gt_labels
        if extra is not None:
            boxes = np.concatenate([extra, boxes])
            labels = np.concatenate([np.full(len(extra), CAR), labels])
        preds.append(Pred(token, boxes=boxes, scores=np.linspace(1.0, 0.5, len(boxes)), labels=labels))
    path = folder / "results_nusc.json"
    path.write_text(json.dumps(to_submission(preds, records)))
    return detection_metrics(nusc, path, records, eval_set=eval_set)


def test_gt_boxes_as_predictions_give_map_one(nusc, val_records, tmp_path):
    out = score_gt_as_predictions(nusc, val_records, tmp_path)
    assert out["det_map"] == pytest.approx(1.0, abs=1e-6)


def test_gt_boxes_survive_the_trip_to_the_global_frame(nusc, val_records, tmp_path):
    # Translation, size, heading and velocity errors all vanish only if every frame change is right.
    out = score_gt_as_predictions(nusc, val_records, tmp_path)
    assert out["det_ate"] == pytest.approx(0.0, abs=1e-3)
    assert out["det_ase"] == pytest.approx(0.0, abs=1e-3)
    assert out["det_aoe"] == pytest.approx(0.0, abs=1e-3)
    assert out["det_ave"] == pytest.approx(0.0, abs=1e-3)


def test_boxes_shifted_by_one_and_a_half_metres_lose_the_tight_thresholds(nusc, val_records, tmp_path):
    # Centre distance 1.5 m: misses at 0.5 and 1 m, hits at 2 and 4 m -> AP at most 0.5 per class
    # (a little less: boxes near |x| = 15 m slide out of VAD's range and their GT is missed).
    out = score_gt_as_predictions(nusc, val_records, tmp_path, shift_x=1.5)
    assert 0.3 < out["det_map"] <= 0.5 + 1e-9


def test_predictions_outside_vad_range_are_not_counted(nusc, val_records, tmp_path):
    far = np.array([[14.0, 45.0, 0.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])  # y beyond 30 m: out of range
    out = score_gt_as_predictions(nusc, val_records, tmp_path, extra=far)
    assert out["det_map"] == pytest.approx(1.0, abs=1e-6)


def test_false_positive_in_range_lowers_map(nusc, val_records, tmp_path):
    near = np.array([[14.0, 25.0, 0.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])
    out = score_gt_as_predictions(nusc, val_records, tmp_path, extra=near)
    assert out["det_map"] < 1.0


def test_samples_outside_the_eval_split_are_refused(nusc, val_records, tmp_path):
    with pytest.raises(DataError, match="is not in split mini_train"):
        score_gt_as_predictions(nusc, val_records, tmp_path, eval_set="mini_train")


def test_eval_set_follows_version_and_split():
    assert eval_set_for("v1.0-mini", "val") == "mini_val"
    assert eval_set_for("v1.0-trainval", "train") == "train"


def test_eval_set_of_the_test_version_is_refused():
    with pytest.raises(DataError, match="no annotated 'val' split"):
        eval_set_for("v1.0-test", "val")
