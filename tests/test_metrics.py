"""The metrics against fixtures of VAD's own evaluation code, and hand cases for its rules.

The fixtures in tests/fixtures/metrics/ hold inputs and the outputs of hustvl/VAD's official evaluation code
on them (how they were made: the README there), so parity is checked without the official code installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from netroller.data.index import DETECTION_CLASSES, MAP_CLASSES, read_index
from netroller.errors import DataError
from netroller.metrics import collision, collision_exact
from netroller.metrics.detection import detection_metrics, eval_set_for, in_vad_range, to_submission
from netroller.metrics.map_ap import average_precision, map_ap, match_scores
from netroller.metrics.planning import PlanningSample, plan_l2, plan_l2_by_scene

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
CAR = DETECTION_CLASSES.index("car")
PED = DETECTION_CLASSES.index("pedestrian")
CONE = DETECTION_CLASSES.index("traffic_cone")
DIVIDER = MAP_CLASSES.index("divider")
CAT_CAR, CAT_CHILD, CAT_ANIMAL, CAT_BARRIER = 17, 3, 1, 9  # nuScenes category-table positions


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


@pytest.fixture(scope="module")
def planning_fixture() -> dict:
    return json.loads((FIXTURES / "planning_official.json").read_text())


@pytest.fixture(scope="module")
def det_map_fixture() -> dict:
    return json.loads((FIXTURES / "detection_map_official.json").read_text())


def fixture_sample(inputs: dict) -> PlanningSample:
    dtypes = {"labels": np.int64, "categories": np.int64, "num_lidar_pts": np.int64}
    return PlanningSample(**{k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in inputs.items()})


def straight(speed: float = 2.5) -> np.ndarray:
    """(6, 2) positions driving forward (+y) at `speed` metres per 0.5 s step."""
    return np.stack([np.zeros(6), speed * np.arange(1, 7)], axis=-1)


def sample(
    plan,
    gt_traj,
    boxes,
    *,
    labels=None,
    categories=None,
    fut_mask=None,
    fut_traj=None,
    fut_yaw=None,
    points=None,
):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 9)
    n = boxes.shape[0]
    return PlanningSample(
        plan=np.asarray(plan, np.float32),
        gt_traj=np.asarray(gt_traj, np.float32),
        gt_mask=np.ones(6, np.float32),
        boxes=boxes,
        labels=np.full(n, CAR) if labels is None else np.asarray(labels),
        categories=np.full(n, CAT_CAR) if categories is None else np.asarray(categories),
        fut_traj=np.zeros((n, 6, 2), np.float32) if fut_traj is None else np.asarray(fut_traj, np.float32),
        fut_yaw=np.zeros((n, 6), np.float32) if fut_yaw is None else np.asarray(fut_yaw, np.float32),
        fut_mask=np.ones((n, 6), np.float32) if fut_mask is None else np.asarray(fut_mask, np.float32),
        num_lidar_pts=np.full(n, 10) if points is None else np.asarray(points),
    )


# A car parked 10 m ahead, facing forward (4.5 m long, 2 m wide).
PARKED_CAR = [[0.0, 10.0, 0.0, 2.0, 4.5, 1.6, np.pi / 2, 0.0, 0.0]]
STOP_AT_CAR = np.array([[0.0, 2.5], [0.0, 5.0], [0.0, 7.5], [0.0, 8.0], [0.0, 8.0], [0.0, 8.0]])
STAND_STILL = np.zeros((6, 2))


# ---- planning: L2 ----


def test_l2_equals_the_official_per_sample_and_aggregate_figures(planning_fixture):
    # Float32 throughout, as VAD; the fixture's torch-on-CPU sqrt is up to one ulp off the correctly rounded
    # one numpy computes: 1e-7 relative per sample.
    samples = [fixture_sample(c["inputs"]) for c in planning_fixture["cases"]]
    for case, s in zip(planning_fixture["cases"], samples, strict=True):
        if case["official"]["fut_valid_flag"]:
            for n in (1, 2, 3):
                official = case["official"][f"plan_L2_{n}s"]
                assert plan_l2([s])[f"plan_L2_{n}s"] == pytest.approx(official, rel=1e-6, abs=1e-7)
    out = plan_l2(samples)
    for n in (1, 2, 3):
        assert out[f"plan_L2_{n}s"] == pytest.approx(planning_fixture["aggregate"][f"plan_L2_{n}s"], abs=1e-6)
        assert out[f"plan_l2_{n}s"] == out[f"plan_L2_{n}s"]


def test_lateral_offset_of_one_metre_gives_l2_one_at_every_horizon():
    out = plan_l2([sample(straight() + [1.0, 0.0], straight(), [])])
    for n in (1, 2, 3):
        assert out[f"plan_l2_{n}s"] == pytest.approx(1.0)
        assert out[f"plan_l2_at_{n}s"] == pytest.approx(1.0)


def test_l2_vad_convention_averages_steps_and_uniad_takes_the_last():
    plan = np.stack([np.arange(1, 7), np.zeros(6)], -1)  # error grows 1 m per step
    out = plan_l2([sample(plan, STAND_STILL, [])])
    assert out["plan_l2_1s"] == pytest.approx(1.5)
    assert out["plan_l2_at_1s"] == pytest.approx(2.0)
    assert out["plan_l2_3s"] == pytest.approx(3.5)
    assert out["plan_l2_at_3s"] == pytest.approx(6.0)


def test_l2_skips_samples_without_all_future_frames():
    far = sample(STAND_STILL + 100.0, STAND_STILL, [])
    far = PlanningSample(**{**vars(far), "gt_mask": np.array([1, 1, 1, 1, 1, 0], np.float32)})
    assert plan_l2([sample(STAND_STILL, STAND_STILL, []), far])["plan_l2_3s"] == pytest.approx(0.0)


def test_l2_by_scene_is_each_scenes_own_l2():
    partial = PlanningSample(
        **{**vars(sample(STAND_STILL, STAND_STILL, [])), "gt_mask": np.array([1, 1, 1, 1, 1, 0], np.float32)}
    )
    samples = [
        sample(straight() + [1.0, 0.0], straight(), []),
        sample(straight() + [3.0, 0.0], straight(), []),
        sample(straight(), straight(), []),
        partial,
    ]
    out = plan_l2_by_scene(samples, ["scene-b", "scene-a", "scene-b", "scene-c"])
    assert list(out) == ["scene-a", "scene-b", "scene-c"]
    assert out["scene-a"]["plan_l2_3s"] == pytest.approx(3.0)
    assert out["scene-b"]["plan_l2_2s"] == pytest.approx(0.5) and out["scene-b"]["num_planning_samples"] == 2
    assert out["scene-c"] == {
        "plan_l2_1s": None,
        "plan_l2_2s": None,
        "plan_l2_3s": None,
        "num_planning_samples": 0,
    }
    with pytest.raises(ValueError):
        plan_l2_by_scene(samples, ["scene-a"])


# ---- planning: VAD's collision (obj_box_col) ----


def test_vad_collision_steps_equal_the_official_on_every_fixture_case(planning_fixture):
    for case in planning_fixture["cases"]:
        s = fixture_sample(case["inputs"])
        occ = collision.agent_occupancy(s)
        assert collision.step_collisions(s.plan, occ).tolist() == case["official_steps"]["plan"], case["name"]
        assert collision.step_collisions(s.gt_traj, occ).tolist() == case["official_steps"]["gt"], case[
            "name"
        ]
        if case["official"]["fut_valid_flag"]:
            out = collision.plan_collision([s])
            for n in (1, 2, 3):
                assert out[f"plan_obj_box_col_{n}s"] == case["official"][f"plan_obj_box_col_{n}s"], case[
                    "name"
                ]


def test_vad_collision_rates_equal_the_official_aggregate(planning_fixture):
    out = collision.plan_collision([fixture_sample(c["inputs"]) for c in planning_fixture["cases"]])
    for n in (1, 2, 3):
        official = planning_fixture["aggregate"][f"plan_obj_box_col_{n}s"]
        assert out[f"plan_obj_box_col_{n}s"] == pytest.approx(official, abs=1e-12)
        assert out[f"plan_col_{n}s"] == pytest.approx(100 * official, abs=1e-10)


def test_ego_footprint_is_the_official_32_cells(planning_fixture):
    rows = collision.GRID - collision.FOOTPRINT_ROWS  # image rows of the footprint at the origin
    cells = sorted(zip(rows.tolist(), collision.FOOTPRINT_COLS.tolist(), strict=True))
    assert [list(c) for c in cells] == sorted(planning_fixture["official_footprint_cells"])


def test_plan_into_a_parked_car_collides_from_the_step_it_reaches_it():
    out = collision.plan_collision([sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR)])
    assert out["plan_col_1s"] == 0.0
    assert out["plan_obj_box_col_2s"] == pytest.approx(0.5)
    assert out["plan_col_3s"] == pytest.approx(100 * np.float32(4 / 6), abs=1e-12)


def test_step_where_gt_ego_collides_counts_as_not_colliding_but_stays_in_the_mean():
    gt = STOP_AT_CAR.copy()
    gt[4:] = [0.0, 2.0]  # the GT ego collides at steps 2 and 3 only
    s = sample(STOP_AT_CAR, gt, PARKED_CAR)
    assert collision.step_collisions(s.plan, collision.agent_occupancy(s)).tolist() == [0, 0, 1, 1, 1, 1]
    out = collision.plan_collision([s])
    assert out["plan_obj_box_col_2s"] == 0.0  # steps 2, 3 skipped, 4 steps in the denominator
    assert out["plan_obj_box_col_3s"] == pytest.approx(np.float32(2 / 6), abs=1e-12)


def test_agents_on_or_past_the_perception_range_edge_are_not_obstacles():
    # VAD keeps boxes with -15 < x < 15 and -30 < y < 30 (strict); the plan drives over each box.
    for x, hits in ((14.99, True), (15.0, False), (-15.0, False), (-14.99, True)):
        plan = np.tile([x, 6.0], (6, 1))
        box = [[x, 6.0, 0.0, 2.0, 4.0, 1.6, 0.0, 0.0, 0.0]]
        assert (collision.plan_collision([sample(plan, STAND_STILL, box)])["plan_col_3s"] > 0) == hits, x
    for y, hits in ((29.99, True), (30.0, False)):
        plan = np.tile([0.0, y], (6, 1))
        box = [[0.0, y, 0.0, 2.0, 4.0, 1.6, np.pi / 2, 0.0, 0.0]]
        assert (collision.plan_collision([sample(plan, STAND_STILL, box)])["plan_col_3s"] > 0) == hits, y


def test_boxes_without_lidar_points_are_not_obstacles():
    # VAD's test datasets keep boxes with lidar points (not its training valid_flag, lidar or radar).
    for points, hits in ((0, False), (1, True)):
        s = sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR, points=[points])
        assert (collision.plan_collision([s])["plan_col_3s"] > 0) == hits, points


def test_only_vehicle_and_human_categories_are_obstacles():
    for category, hits in ((CAT_CAR, True), (CAT_CHILD, True), (CAT_ANIMAL, False), (CAT_BARRIER, False)):
        s = sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR, categories=[category])
        assert (collision.plan_collision([s])["plan_col_3s"] > 0) == hits, category


def test_agent_masked_at_a_step_is_not_drawn_there():
    mask = np.ones((1, 6))
    mask[0, 3:] = 0
    out = collision.plan_collision([sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR, fut_mask=mask)])
    assert out["plan_obj_box_col_3s"] == pytest.approx(np.float32(1 / 6), abs=1e-12)


def test_agent_heading_follows_its_annotated_yaw_changes():
    # A 6 m x 0.5 m bar beside the path, 2 m to the right: turned by 90 degrees it reaches across it.
    box = [[2.5, 6.0, 0.0, 0.5, 6.0, 1.6, np.pi / 2, 0.0, 0.0]]
    plan = np.tile([0.0, 6.0], (6, 1))
    still = collision.plan_collision([sample(plan, STAND_STILL, box)])
    turned = collision.plan_collision([sample(plan, STAND_STILL, box, fut_yaw=np.full((1, 6), np.pi / 2))])
    assert still["plan_col_3s"] == 0.0 and turned["plan_col_3s"] == 100.0


def test_ego_footprint_is_never_rotated():
    # An ego heading sideways (+x) still occupies a box long along y: a car just ahead-left of it collides
    # in VAD's check; our exact check, with the ego turned along +x, misses it.
    plan = np.stack([np.linspace(0.5, 3.0, 6), np.zeros(6)], -1)
    box = [[3.0, 2.0, 0.0, 0.6, 0.6, 1.6, 0.0, 0.0, 0.0]]
    s = sample(plan, STAND_STILL, box)
    assert collision.plan_collision([s])["plan_col_3s"] > 0
    assert collision_exact.plan_collision_exact([s])["plan_col_exact_3s"] == 0.0


# ---- planning: our exact geometric collision (plan_col_exact_*) ----


def test_exact_plan_into_a_parked_car_collides_from_the_step_it_reaches_it():
    # Ego box spans y in [p + 0.5 - 2.04, p + 0.5 + 2.04]; the car starts at y = 7.75: hit from p = 7.5 on.
    out = collision_exact.plan_collision_exact([sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR)])
    assert out["plan_col_exact_1s"] == pytest.approx(0.0)
    assert out["plan_col_exact_2s"] == pytest.approx(50.0)
    assert out["plan_col_exact_3s"] == pytest.approx(400.0 / 6)


def test_exact_plan_passing_beside_the_car_does_not_collide():
    out = collision_exact.plan_collision_exact([sample(STOP_AT_CAR + [4.0, 0.0], STAND_STILL, PARKED_CAR)])
    assert out["plan_col_exact_3s"] == pytest.approx(0.0)


def test_exact_step_where_gt_ego_already_collides_is_skipped():
    gt = STOP_AT_CAR.copy()
    gt[4:] = [0.0, 2.0]
    out = collision_exact.plan_collision_exact([sample(STOP_AT_CAR, gt, PARKED_CAR)])
    assert out["plan_col_exact_2s"] == pytest.approx(0.0)
    assert out["plan_col_exact_3s"] == pytest.approx(200.0 / 6)


def test_exact_agent_masked_at_a_step_is_dropped_there():
    mask = np.ones((1, 6))
    mask[0, 3:] = 0
    out = collision_exact.plan_collision_exact([sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR, fut_mask=mask)])
    assert out["plan_col_exact_3s"] == pytest.approx(100.0 / 6)


def test_exact_traffic_cones_are_not_obstacles():
    s = sample(STOP_AT_CAR, STAND_STILL, PARKED_CAR, labels=[CONE])
    assert collision_exact.plan_collision_exact([s])["plan_col_exact_3s"] == pytest.approx(0.0)


def test_exact_rasterized_box_is_in_the_lidar_frame_x_right_y_forward():
    # A 2 m x 4 m box 10 m ahead (yaw pi/2: long along y) covers cells around x = 0, y = 10.
    grid = collision_exact.rasterize(
        [collision_exact.box_corners(np.array([0.0, 10.0]), 2.0, 4.0, np.pi / 2)]
    )
    ix, iy = np.nonzero(grid)
    assert grid.sum() == 4 * 8
    assert (-50 + 0.5 * ix.min(), -50 + 0.5 * (ix.max() + 1)) == (-1.0, 1.0)
    assert (-50 + 0.5 * iy.min(), -50 + 0.5 * (iy.max() + 1)) == (8.0, 12.0)


def test_planning_sample_of_a_record_reads_the_index_fields(index_path):
    rec = next(r for r in read_index(index_path) if r.num_boxes)
    s = PlanningSample.of(rec, rec.ego_fut_traj)
    assert s.categories is rec.gt_categories and s.fut_yaw is rec.gt_fut_yaw
    assert s.fut_yaw.shape == (rec.num_boxes, 6) and s.categories.shape == (rec.num_boxes,)


def test_index_category_is_the_position_in_the_devkit_category_table(nusc, index_path):
    table = [c["name"] for c in nusc.category]
    for rec in read_index(index_path).split("val"):
        for inst, category in zip(rec.gt_instance_tokens, rec.gt_categories, strict=True):
            ann = next(
                a
                for a in (
                    nusc.get("sample_annotation", t) for t in nusc.get("sample", rec.sample_token)["anns"]
                )
                if a["instance_token"] == inst
            )
            assert table[category] == ann["category_name"]


def test_index_future_yaw_is_the_heading_change_along_the_annotations(nusc, index_path):
    from pyquaternion import Quaternion

    rec = max(read_index(index_path), key=lambda r: float(np.abs(r.gt_fut_yaw).max(initial=0.0)))
    assert np.abs(rec.gt_fut_yaw).max() > 0.05  # some agent turns in the synthetic set
    k = int(np.abs(rec.gt_fut_yaw).max(axis=1).argmax())
    ann = next(
        a
        for a in (nusc.get("sample_annotation", t) for t in nusc.get("sample", rec.sample_token)["anns"])
        if a["instance_token"] == rec.gt_instance_tokens[k]
    )
    start = Quaternion(ann["rotation"])
    for t in range(6):
        if not rec.gt_fut_mask[k, t]:
            break
        ann = nusc.get("sample_annotation", ann["next"])
        turn = (start.inverse * Quaternion(ann["rotation"])).yaw_pitch_roll[0]  # about the vertical axis
        assert np.angle(np.exp(1j * (rec.gt_fut_yaw[k, t] - turn))) == pytest.approx(0.0, abs=1e-3)


# ---- map AP ----


def line(y: float, x0: float = -10.0, x1: float = 10.0) -> np.ndarray:
    """(20, 2) points of a lateral line at `y`."""
    return np.stack([np.linspace(x0, x1, 20), np.full(20, y)], axis=-1)


def map_case(pred_vectors, pred_scores, gt_vectors, gt_labels=None) -> dict[str, float]:
    pred = Pred(
        "s0",
        map_vectors=np.asarray(pred_vectors),
        map_scores=np.asarray(pred_scores, dtype=np.float64),
        map_labels=np.full(len(pred_scores), DIVIDER),
    )
    labels = [DIVIDER] * len(gt_vectors) if gt_labels is None else gt_labels
    return map_ap([pred], {"s0": list(zip(labels, gt_vectors, strict=True))})


def fixture_map_predictions(fixture: dict) -> list[Pred]:
    return [
        Pred(
            p["sample_token"],
            map_vectors=np.asarray(p["map_vectors"], np.float32).reshape(-1, 20, 2),
            map_scores=np.asarray(p["map_scores"], np.float32),
            map_labels=np.asarray(p["map_labels"], np.int64),
        )
        for p in fixture["predictions"]
    ]


def fixture_gt_polylines(fixture: dict) -> dict:
    return {t: [(label, np.asarray(pts)) for label, pts in v] for t, v in fixture["gt_polylines"].items()}


def test_map_ap_equals_the_official_on_the_fixture(det_map_fixture):
    out = map_ap(fixture_map_predictions(det_map_fixture), fixture_gt_polylines(det_map_fixture))
    for key, official in det_map_fixture["official_map"].items():
        assert out[key] == pytest.approx(official, abs=1e-9), key


def test_tied_map_scores_are_ranked_in_vads_sample_order(nusc, det_map_fixture):
    # The fixture's map scores are rounded to 0.1, so many tie across samples; given in reverse, the samples
    # are put back in the devkit's sample table order (VAD's info order) and the official APs come out.
    from netroller.metrics.scoring import in_vad_order

    preds = in_vad_order(fixture_map_predictions(det_map_fixture)[::-1], nusc)
    out = map_ap(preds, fixture_gt_polylines(det_map_fixture))
    for key, official in det_map_fixture["official_map"].items():
        assert out[key] == pytest.approx(official, abs=1e-9), key


def test_identical_vectors_give_map_ap_one_for_their_class():
    out = map_case([line(5.0), line(-5.0)], [0.9, 0.8], [line(5.0), line(-5.0)])
    assert out["map_ap_divider"] == pytest.approx(1.0)


def test_class_without_gt_scores_zero_and_counts_in_the_mean():
    out = map_case([line(5.0)], [0.9], [line(5.0)])
    assert out["map_ap_boundary"] == 0.0 and out["map_ap_ped_crossing"] == 0.0
    assert out["map_ap"] == pytest.approx(1.0 / 3) == out["NuscMap_chamfer/mAP"]


def test_vector_two_metres_off_scores_zero_at_every_threshold():
    out = map_case([line(7.0)], [0.9], [line(5.0)])
    for thr in (0.5, 1.0, 1.5):
        assert out[f"map_ap_divider_{thr}"] == 0.0


def test_chamfer_distance_of_a_shifted_line_is_the_shift():
    resampled = np.stack([np.linspace(-10, 10, 100), np.full(100, 0.0)], -1)
    assert match_scores(resampled[None] + [0, 1.2], resampled[None])[0, 0] == pytest.approx(-1.2)


def test_lines_whose_buffers_do_not_meet_are_not_scored():
    resampled = np.stack([np.linspace(-10, 10, 100), np.full(100, 0.0)], -1)
    assert match_scores(resampled[None] + [0, 4.5], resampled[None])[0, 0] == -100.0


def test_a_zero_length_prediction_never_matches():
    # Chamfer distance 0.06 m to a 0.5 m GT line, but its buffer is empty, so VAD never scores the pair.
    point = np.tile([0.0, 5.0], (20, 1))
    out = map_case([point], [0.9], [np.array([[-0.25, 5.0], [0.25, 5.0]])])
    assert out["map_ap_divider_0.5"] == 0.0


def test_gt_is_compared_as_its_whole_polyline():
    # An L-shaped GT and a prediction along the same L: equal at 100 points, so AP 1 at 0.5 m.
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    pred = np.concatenate(
        [
            np.stack([np.linspace(0, 10, 10), np.zeros(10)], -1)[:-1],
            np.stack([np.full(11, 10.0), np.linspace(0, 10, 11)], -1),
        ]
    )
    assert map_case([pred], [0.9], [gt])["map_ap_divider_0.5"] == pytest.approx(1.0)


def test_higher_scored_false_positive_lowers_ap_by_the_precision_it_costs():
    # Ranked: TP (recall .5, precision 1), FP, TP (recall 1, precision 2/3): AP = .5 * 1 + .5 * 2/3.
    out = map_case([line(5.0), line(20.0), line(-5.0)], [0.9, 0.8, 0.7], [line(5.0), line(-5.0)])
    assert out["map_ap_divider"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicate_prediction_of_one_gt_is_a_false_positive():
    out = map_case([line(5.0), line(5.1)], [0.8, 0.9], [line(5.0)])
    # The better-scored duplicate takes the GT first; the exact copy below it is then a false positive.
    assert out["map_ap_divider_0.5"] == pytest.approx(1.0)


def test_average_precision_of_a_miss_ranked_first_is_half():
    recall = np.array([0.0, 1.0], np.float32)
    precision = np.array([0.0, 0.5], np.float32)
    assert average_precision(recall, precision) == pytest.approx(0.5)


# ---- detection (nuscenes-devkit on the synthetic set) ----


@pytest.fixture(scope="module")
def val_records(index_path) -> dict:
    return {r.sample_token: r for r in read_index(index_path).split("val")}


def test_detection_equals_the_official_on_the_fixture(nusc, val_records, det_map_fixture, tmp_path):
    preds = [
        Pred(
            p["sample_token"],
            boxes=np.asarray(p["boxes"], np.float32).reshape(-1, 9),
            scores=np.asarray(p["scores"], np.float32),
            labels=np.asarray(p["labels"], np.int64),
        )
        for p in det_map_fixture["predictions"]
    ]
    missing = [p.sample_token for p in preds if p.sample_token not in val_records]
    assert not missing, "the synthetic set changed: regenerate the fixture (tests/fixtures/metrics/README.md)"
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps(to_submission(preds, val_records)))
    out = detection_metrics(nusc, path, val_records, eval_set="mini_val")
    official = det_map_fixture["official_detection"]
    assert out["pts_bbox_NuScenes/NDS"] == pytest.approx(official["nd_score"], abs=1e-6)
    assert out["pts_bbox_NuScenes/mAP"] == pytest.approx(official["mean_ap"], abs=1e-6)
    for ours, theirs in (
        ("ate", "trans_err"),
        ("ase", "scale_err"),
        ("aoe", "orient_err"),
        ("ave", "vel_err"),
    ):
        assert out[f"det_{ours}"] == pytest.approx(official["tp_errors"][theirs], abs=1e-6)
    for name, ap in official["mean_dist_aps"].items():
        assert out[f"det_ap_{name}"] == pytest.approx(ap, abs=1e-6)


def score_gt_as_predictions(
    nusc, records: dict, folder, *, shift_x=0.0, extra=None, extra_label=CAR, eval_set="mini_val"
):
    """Detection metrics of the GT boxes used as predictions, optionally shifted or with extra boxes."""
    preds = []
    for token, rec in records.items():
        boxes = rec.gt_boxes.astype(np.float64).copy()
        boxes[:, 0] += shift_x
        labels = rec.gt_labels
        if extra is not None:
            boxes = np.concatenate([extra, boxes])
            labels = np.concatenate([np.full(len(extra), extra_label), labels])
        preds.append(Pred(token, boxes=boxes, scores=np.linspace(1.0, 0.5, len(boxes)), labels=labels))
    path = folder / "results_nusc.json"
    path.write_text(json.dumps(to_submission(preds, records)))
    return detection_metrics(nusc, path, records, eval_set=eval_set)


def gt_in_ranges(records: dict) -> tuple[set, set]:
    """Classes with GT in VAD's GT range (global-axis offsets), and those whose every such GT box is also
    inside the prediction range (ego frame)."""
    present, all_kept = set(), set(DETECTION_CLASSES)
    for rec in records.values():
        for box, label in zip(rec.gt_boxes, rec.gt_labels, strict=True):
            centre = np.append(box[:3].astype(np.float64), 1.0)
            dx, dy = (rec.ego_to_global @ rec.lidar_to_ego @ centre)[:2] - rec.ego_to_global[:2, 3]
            x_ego, y_ego = (rec.lidar_to_ego @ centre)[:2]
            if abs(dx) < 30 and abs(dy) < 15:
                present.add(DETECTION_CLASSES[label])
                if not (abs(x_ego) <= 30 and abs(y_ego) <= 15):
                    all_kept.discard(DETECTION_CLASSES[label])
    return present, all_kept & present


def test_gt_boxes_as_predictions_score_by_vads_two_ranges(nusc, val_records, tmp_path):
    # GT counts inside a global-axis rectangle, predictions only inside the ego-frame one as well: a class
    # scores AP 1 only if all its GT in range is in both; GT in one only is missed; no GT in range: AP 0.
    out = score_gt_as_predictions(nusc, val_records, tmp_path)
    present, complete = gt_in_ranges(val_records)
    assert complete and present - complete  # the synthetic val scene has both kinds
    for name in DETECTION_CLASSES:
        ap = out[f"det_ap_{name}"]
        if name in complete:
            assert ap == pytest.approx(1.0, abs=1e-9), name
        elif name in present:
            assert 0.0 <= ap < 1.0, name
        else:
            assert ap == 0.0, name
    assert out["det_map"] == pytest.approx(
        np.mean([out[f"det_ap_{n}"] for n in DETECTION_CLASSES]), abs=1e-12
    )


def test_gt_boxes_survive_the_trip_to_the_global_frame(nusc, val_records):
    from pyquaternion import Quaternion

    token, rec = next((t, r) for t, r in val_records.items() if r.num_boxes)
    preds = [Pred(token, boxes=rec.gt_boxes, scores=np.ones(rec.num_boxes), labels=rec.gt_labels)]
    entries = to_submission(preds, {token: rec})["results"][token]
    anns = [nusc.get("sample_annotation", t) for t in nusc.get("sample", token)["anns"]]
    assert entries
    for e in entries:  # each kept box lands on its annotation: centre, size, heading, velocity
        ann = min(anns, key=lambda a: np.linalg.norm(np.subtract(a["translation"], e["translation"])))
        assert e["translation"] == pytest.approx(ann["translation"], abs=1e-4)
        assert e["size"] == pytest.approx(ann["size"], abs=1e-4)
        assert abs((Quaternion(e["rotation"]).inverse * Quaternion(ann["rotation"])).angle) < 1e-4
        assert e["velocity"] == pytest.approx(nusc.box_velocity(ann["token"])[:2], abs=1e-3)


def test_predictions_below_score_two_tenths_are_dropped(val_records):
    token, rec = next(iter(val_records.items()))
    box = np.array([[0.0, 5.0, 0.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])
    for score, kept in ((0.2, 1), (0.19999, 0)):
        sub = to_submission(
            [Pred(token, boxes=box, scores=np.array([score]), labels=np.array([CAR]))], {token: rec}
        )
        assert len(sub["results"][token]) == kept, score


def test_predictions_outside_the_ego_frame_range_are_dropped(val_records):
    token, rec = next(iter(val_records.items()))
    to_lidar = np.linalg.inv(rec.lidar_to_ego)
    for (x_ego, y_ego), kept in (((29.9, 0.0), 1), ((30.1, 0.0), 0), ((0.0, 14.9), 1), ((0.0, -15.1), 0)):
        xy = (to_lidar[:3, :3] @ [x_ego, y_ego, 0.0] + to_lidar[:3, 3])[:2]
        box = np.array([[*xy, 0.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])
        sub = to_submission(
            [Pred(token, boxes=box, scores=np.array([0.9]), labels=np.array([CAR]))], {token: rec}
        )
        assert len(sub["results"][token]) == kept, (x_ego, y_ego)


def test_range_is_a_global_axis_rectangle_around_the_ego():
    from nuscenes.eval.detection.data_classes import DetectionBox

    def at(dx, dy):
        return DetectionBox(translation=(dx, dy, 0.0), ego_translation=(dx, dy, 0.0))

    assert in_vad_range(at(29.9, 14.9)) and in_vad_range(at(-29.9, -14.9))
    assert not in_vad_range(at(30.0, 0.0)) and not in_vad_range(
        at(0.0, 15.0)
    )  # strict, as the devkit's filter
    assert not in_vad_range(at(14.0, 29.0))  # x is the global x, whatever the ego's heading


def test_boxes_shifted_by_one_and_a_half_metres_lose_the_tight_thresholds(nusc, val_records, tmp_path):
    # Centre distance 1.5 m: misses at 0.5 and 1 m, hits at 2 and 4 m -> about half the AP (boxes near the
    # range edges move in or out of it, so not exactly half).
    exact = score_gt_as_predictions(nusc, val_records, tmp_path)
    shifted = score_gt_as_predictions(nusc, val_records, tmp_path, shift_x=1.5)
    assert 0.3 * exact["det_map"] < shifted["det_map"] < 0.6 * exact["det_map"]


def test_false_positive_in_range_lowers_map(nusc, val_records, tmp_path):
    exact = score_gt_as_predictions(nusc, val_records, tmp_path)
    near = np.array([[0.0, 8.0, 0.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])  # 8 m ahead: inside every range
    with_fp = score_gt_as_predictions(nusc, val_records, tmp_path, extra=near, extra_label=PED)
    assert with_fp["det_ap_pedestrian"] < exact["det_ap_pedestrian"]


def test_samples_outside_the_eval_split_are_refused(nusc, val_records, tmp_path):
    with pytest.raises(DataError, match="is not in split mini_train"):
        score_gt_as_predictions(nusc, val_records, tmp_path, eval_set="mini_train")


def test_eval_set_follows_version_and_split():
    assert eval_set_for("v1.0-mini", "val") == "mini_val"
    assert eval_set_for("v1.0-trainval", "train") == "train"


def test_eval_set_of_the_test_version_is_refused():
    with pytest.raises(DataError, match="no annotated 'val' split"):
        eval_set_for("v1.0-test", "val")
