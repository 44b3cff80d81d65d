"""VAD's box collision rate (`obj_box_col`, ST-P3's PlanningMetric as VAD's `metric_stp3.py` has it).

Every published Col figure of VAD and of the NetRoller paper comes from that computation, so this module
reproduces it, float32 rounding included, rather than a geometrically better one (that one is
`netroller.metrics.collision_exact`, reported as `plan_col_exact_Ns`). What VAD's code does:

- Agents: the sample's GT boxes that VAD's test pipeline keeps: one of the 10 detection classes, at least
  one lidar point (its test datasets leave `use_valid_flag` off, so a box seen by radar only, which the
  index keeps, is dropped), centre strictly inside the perception range -15 < x < 15, -30 < y < 30 m
  (compared in float32); of those, the ones of a vehicle or human category by the nuScenes category-table
  index (VAD's `category_index`: human 2..8, vehicle 14..23 in the 32-category table).
- Each agent is moved along its GT future (positions and heading changes, both per-step offsets summed in
  float32) and drawn at each step where its future exists, as the rectangle length x width around its
  centre, its corners in float32, mapped to a 200 x 200 image (column 2 (x + 50), row 2 (50 - y)), rounded
  to integer vertices and filled with OpenCV's `fillPoly`. The heading starts from the box yaw after
  mmdet3d's round trip (SECOND yaw -yaw - pi/2 in float32, wrapped to [-pi, pi), converted back).
- The ego footprint (1.85 m x 4.084 m, centre 0.5 m ahead of the lidar) is rasterised once at the origin,
  never rotated: the 8 x 4 integer grid points inside it (scikit-image's polygon rule). At each step it is
  shifted by the planned position in cells, truncated to integers (row 200 - (2 y + r), column 2 x + c) and
  clamped to the image, so an ego off the grid tests the border cells.
- A step collides when any footprint cell is occupied at that step. Steps where the GT ego trajectory
  collides count as not colliding (their denominator stays). The value at N s is the mean over the first
  2N steps (a float32), averaged over the samples with all 6 future keyframes.

Keys: `plan_col_Ns` in percent, and VAD's own `plan_obj_box_col_Ns` as VAD prints it (a fraction).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from netroller.data.index import FUT_STEPS
from netroller.metrics.planning import (
    HORIZONS_S,
    STEPS_PER_SECOND,
    PlanningSample,
    mean_over_samples,
    per_sample_mean,
)

GRID = 200  # cells per side
CELL = 0.5  # m
FIRST_CELL_CENTRE = -49.75  # m: ST-P3's bev_start_position
EGO_WIDTH = 1.85
EGO_LENGTH = 4.084
EGO_FORWARD_SHIFT = 0.5  # m: the footprint's centre ahead of the lidar origin

# VAD's point_cloud_range in the lidar frame (x_min, y_min, x_max, y_max); the range filter is strict.
PERCEPTION_RANGE = np.array([-15.0, -30.0, 15.0, 30.0], dtype=np.float32)
# VAD's `category_index`: positions in the nuScenes category table (human.pedestrian.*, vehicle.* bar ego).
HUMAN_CATEGORIES = frozenset(range(2, 9))
VEHICLE_CATEGORIES = frozenset(range(14, 24))


def _footprint() -> tuple[np.ndarray, np.ndarray]:
    """The ego footprint's cells at the origin: (rows, cols) offsets, rows along the length (forward).

    Grid coordinates are (metres - first cell centre) / cell; the cells are the integer points strictly
    inside the rectangle. None of its edges passes through an integer point (the edges sit at 96.416,
    104.584 and 97.65, 101.35), so scikit-image's boundary rule never decides anything here.
    """
    lo_len = (-EGO_LENGTH / 2 + EGO_FORWARD_SHIFT - FIRST_CELL_CENTRE) / CELL
    hi_len = (EGO_LENGTH / 2 + EGO_FORWARD_SHIFT - FIRST_CELL_CENTRE) / CELL
    lo_wid = (-EGO_WIDTH / 2 - FIRST_CELL_CENTRE) / CELL
    hi_wid = (EGO_WIDTH / 2 - FIRST_CELL_CENTRE) / CELL
    rows = np.arange(np.floor(lo_len) + 1, np.ceil(hi_len)).astype(np.int64)
    cols = np.arange(np.floor(lo_wid) + 1, np.ceil(hi_wid)).astype(np.int64)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return rr.ravel(), cc.ravel()


FOOTPRINT_ROWS, FOOTPRINT_COLS = _footprint()  # 32 cells


def in_perception_range(boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: centre strictly inside VAD's range, compared in float32 as mmdet3d's `in_range_bev`."""
    xy = np.asarray(boxes, dtype=np.float32).reshape(-1, 9)[:, :2]
    r = PERCEPTION_RANGE
    return (xy[:, 0] > r[0]) & (xy[:, 1] > r[1]) & (xy[:, 0] < r[2]) & (xy[:, 1] < r[3])


def start_heading(yaw: np.ndarray) -> np.ndarray:
    """(N,) float32: the heading VAD's metric starts from, after the index yaw's trip through mmdet3d.

    VAD's converter stores the SECOND yaw -yaw - pi/2 (float64, then a float32 box tensor); the test
    pipeline wraps it to [-pi, pi) (mmdet3d `limit_yaw`, offset 0.5, period 2 pi, float32); the metric
    converts it back as -(yaw + pi/2) in float32. Up to float32 rounding that is `yaw` modulo 2 pi.
    """
    second = (-np.asarray(yaw, dtype=np.float64) - np.pi / 2).astype(np.float32)
    period = np.float32(2 * np.pi)
    wrapped = second - np.floor(second / period + np.float32(0.5)) * period
    return (np.float32(-1) * (wrapped + np.float32(np.pi / 2))).astype(np.float32)


def _corners_in_image(x, y, yaw, length, width) -> np.ndarray:
    """(4, 2) int32 image vertices (column, row) of one agent rectangle, all scalars float32."""
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    half = np.array(
        [[length / 2, -length / 2, -length / 2, length / 2], [width / 2, width / 2, -width / 2, -width / 2]]
    )
    corners = np.matmul(rot, half) + np.array([[x, y]]).T  # (2, 4) float32, lidar frame
    # Lidar -> image axes (y flipped), then metres -> pixels; float64 from here, exactly as VAD's code.
    image = np.matmul(np.array([[1, 0], [0, -1]]), corners)
    start = np.float32(FIRST_CELL_CENTRE)
    half_cell = np.float32(CELL) / 2.0
    pixels = ((image - start) + half_cell).T / np.float32(CELL)
    return np.round(pixels).astype(np.int32)


def agent_occupancy(sample: PlanningSample) -> np.ndarray:
    """(6, 200, 200) uint8: VAD's occupancy of the vehicle and human agents along their GT futures,
    indexed [step, row, column] with row 2 (50 - y) and column 2 (x + 50)."""
    steps = FUT_STEPS
    occ = np.zeros((steps, GRID, GRID), dtype=np.uint8)
    boxes = np.asarray(sample.boxes, dtype=np.float32).reshape(-1, 9)
    keep = in_perception_range(boxes) & (np.asarray(sample.num_lidar_pts).reshape(-1) > 0)
    categories = np.asarray(sample.categories, dtype=np.float32).reshape(-1)
    drawn = [
        k
        for k in np.flatnonzero(keep)
        if int(categories[k]) in HUMAN_CATEGORIES or int(categories[k]) in VEHICLE_CATEGORIES
    ]
    if not drawn:
        return occ
    heading0 = start_heading(boxes[:, 6])
    fut_traj = np.asarray(sample.fut_traj, dtype=np.float32).reshape(-1, steps, 2)
    fut_yaw = np.asarray(sample.fut_yaw, dtype=np.float32).reshape(-1, steps)
    fut_mask = np.asarray(sample.fut_mask, dtype=np.float32).reshape(-1, steps)
    positions = fut_traj + boxes[:, None, 0:2]  # float32
    headings = fut_yaw + heading0[:, None]  # float32
    for t in range(steps):
        for k in drawn:
            if fut_mask[k, t] != 1:
                continue
            x, y = positions[k, t]
            poly = _corners_in_image(x, y, headings[k, t], boxes[k, 4], boxes[k, 3])
            cv2.fillPoly(occ[t], [poly], 1)
    return occ


def step_collisions(traj: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """(T,) bool: whether the unrotated ego footprint, shifted to each position of `traj` (T, 2), covers an
    occupied cell of that step."""
    traj = np.asarray(traj, dtype=np.float32).reshape(-1, 2)
    cells = traj / np.float32(CELL)  # float32, as the torch division
    out = np.zeros(traj.shape[0], dtype=bool)
    for t in range(traj.shape[0]):
        rows = (GRID - (np.float64(cells[t, 1]) + FOOTPRINT_ROWS)).astype(np.int32)
        cols = (np.float64(cells[t, 0]) + FOOTPRINT_COLS).astype(np.int32)
        rows = np.clip(rows, 0, GRID - 1)
        cols = np.clip(cols, 0, GRID - 1)
        out[t] = bool(occupancy[t, rows, cols].any())
    return out


def sample_collisions(sample: PlanningSample) -> np.ndarray:
    """(6,) bool per step: the plan collides there and the GT ego trajectory does not."""
    occ = agent_occupancy(sample)
    gt_hits = step_collisions(sample.gt_traj, occ)
    return step_collisions(sample.plan, occ) & ~gt_hits


def plan_collision(samples: Sequence[PlanningSample]) -> dict[str, float]:
    """`plan_col_{1,2,3}s` (percent) and VAD's `plan_obj_box_col_{1,2,3}s` (fraction) over the samples with
    all 6 future frames; NaN when there is none."""
    hits = [sample_collisions(s) for s in samples if s.full_future]
    out: dict[str, float] = {}
    for n in HORIZONS_S:
        steps = n * STEPS_PER_SECOND
        rate = mean_over_samples([per_sample_mean(h.astype(np.float32), steps) for h in hits])
        out[f"plan_obj_box_col_{n}s"] = rate
        out[f"plan_col_{n}s"] = rate * 100.0
    return out
