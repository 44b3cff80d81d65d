"""Our geometric box collision rate, `plan_col_exact_Ns`: not VAD's, and not comparable with published tables.

VAD's figure (`netroller.metrics.collision`) rasterises agents with OpenCV's polygon fill and places an
unrotated ego footprint shifted by whole cells; this one places every box where it is. Reported beside
VAD's, labelled as ours; on the same inputs it gives about 0.4x VAD's values.

Grid: ST-P3's 200 x 200 cells of 0.5 m over [-50, 50] m, laid out in the lidar frame (cell (i, j) covers x in
[-50 + 0.5 i, -50 + 0.5 (i + 1)) and y likewise). A cell is occupied by a box when the cell's centre lies
inside the box. Agent boxes of the vehicle and human detection classes (all the index holds, whatever the
range) are moved along their GT futures (their heading follows the step's displacement when they move more
than 0.1 m, else it is kept); agents whose future is masked at a step are dropped at that step. The ego box
(1.85 m wide, 4.084 m long, its centre 0.5 m ahead of the lidar origin along the heading) is placed at each
planned position with the heading of the planned segment that ends there (the first segment starts at the
origin; a segment shorter than 1 cm keeps the previous heading, facing +y at the start). A step where the
GT ego box already collides counts as not colliding; the value at N s is the fraction of colliding steps
among the first 2N, x100 %, averaged over the samples with all 6 future frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netroller.data.index import DETECTION_CLASSES, FUT_STEPS
from netroller.metrics.planning import HORIZONS_S, STEPS_PER_SECOND, PlanningSample

GRID_RES = 0.5
GRID_MIN = -50.0
GRID_SIZE = 200

EGO_WIDTH = 1.85
EGO_LENGTH = 4.084
EGO_FORWARD_SHIFT = 0.5  # the box centre lies this far ahead of the lidar origin

COLLISION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "motorcycle",
    "bicycle",
    "pedestrian",
)
COLLISION_LABELS = frozenset(DETECTION_CLASSES.index(name) for name in COLLISION_CLASSES)
_MIN_HEADING_STEP = 0.01  # m: a shorter ego segment keeps the previous heading
_MIN_AGENT_STEP = 0.1  # m: a shorter agent step keeps its heading (parked cars jitter in the annotations)


def box_corners(center: np.ndarray, width: float, length: float, yaw: float) -> np.ndarray:
    """(4, 2) corners of a ground box: `length` along the heading `yaw` (counter-clockwise from +x)."""
    c, s = np.cos(yaw), np.sin(yaw)
    along = np.array([c, s]) * (length / 2)
    across = np.array([-s, c]) * (width / 2)
    ctr = np.asarray(center, dtype=np.float64)
    return np.stack([ctr + along + across, ctr - along + across, ctr - along - across, ctr + along - across])


def rasterize(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """(200, 200) bool grid indexed [ix, iy]: cells whose centre lies inside any convex `(4, 2)` polygon."""
    grid = np.zeros((GRID_SIZE, GRID_SIZE), dtype=bool)
    for poly in polygons:
        ix, iy = _cells_in(poly)
        grid[ix, iy] = True
    return grid


def _cells_in(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices of the cells whose centres are inside a convex polygon, inside the grid."""
    lo = np.floor((poly.min(axis=0) - GRID_MIN) / GRID_RES).astype(int)
    hi = np.floor((poly.max(axis=0) - GRID_MIN) / GRID_RES).astype(int)
    # Clipping keeps the window inside the grid; a polygon off the grid then tests border cells whose
    # centres it does not contain, so nothing outside [-50, 50] m is ever marked.
    lo = np.clip(lo, 0, GRID_SIZE - 1)
    hi = np.clip(hi, 0, GRID_SIZE - 1)
    ix, iy = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    ix, iy = ix.ravel(), iy.ravel()
    centres = np.stack([GRID_MIN + (ix + 0.5) * GRID_RES, GRID_MIN + (iy + 0.5) * GRID_RES], axis=-1)
    # A point is inside a convex polygon when it is on the same side of every edge.
    edges = np.roll(poly, -1, axis=0) - poly  # (4, 2)
    rel = centres[:, None, :] - poly[None, :, :]  # (K, 4, 2)
    cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]  # (K, 4)
    inside = np.all(cross >= 0, axis=1) | np.all(cross <= 0, axis=1)
    return ix[inside], iy[inside]


def agent_occupancy(sample: PlanningSample) -> np.ndarray:
    """(6, 200, 200) occupancy of the vehicle and human GT boxes moved along their GT futures."""
    occ = np.zeros((FUT_STEPS, GRID_SIZE, GRID_SIZE), dtype=bool)
    boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 9)
    fut_traj = np.asarray(sample.fut_traj, dtype=np.float64).reshape(-1, FUT_STEPS, 2)
    fut_mask = np.asarray(sample.fut_mask).reshape(-1, FUT_STEPS)
    labels = np.asarray(sample.labels).reshape(-1)
    for k in range(boxes.shape[0]):
        if int(labels[k]) not in COLLISION_LABELS:
            continue
        x, y, _, w, length, _, yaw = boxes[k, :7]
        prev = np.zeros(2)
        for t in range(FUT_STEPS):
            if fut_mask[k, t] < 0.5:
                continue
            step = fut_traj[k, t] - prev
            if np.linalg.norm(step) > _MIN_AGENT_STEP:
                yaw = float(np.arctan2(step[1], step[0]))
            prev = fut_traj[k, t]
            ix, iy = _cells_in(box_corners(np.array([x, y]) + fut_traj[k, t], w, length, yaw))
            occ[t, ix, iy] = True
    return occ


def ego_boxes(traj: np.ndarray) -> list[np.ndarray]:
    """The ego box `(4, 2)` at each position of a `(6, 2)` trajectory, headed along the segment into it."""
    traj = np.asarray(traj, dtype=np.float64)
    yaw = np.pi / 2  # facing +y (forward) at the start
    prev = np.zeros(2)
    out = []
    for t in range(traj.shape[0]):
        step = traj[t] - prev
        if np.linalg.norm(step) > _MIN_HEADING_STEP:
            yaw = float(np.arctan2(step[1], step[0]))
        prev = traj[t]
        heading = np.array([np.cos(yaw), np.sin(yaw)])
        out.append(box_corners(traj[t] + EGO_FORWARD_SHIFT * heading, EGO_WIDTH, EGO_LENGTH, yaw))
    return out


def step_collisions(traj: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """(6,) bool: whether the ego box at each step of `traj` overlaps an occupied cell of that step."""
    out = np.zeros(traj.shape[0], dtype=bool)
    for t, corners in enumerate(ego_boxes(traj)):
        ix, iy = _cells_in(corners)
        out[t] = bool(occupancy[t, ix, iy].any())
    return out


def sample_collisions(sample: PlanningSample) -> np.ndarray:
    """(6,) bool per step: the plan collides there and the GT ego trajectory does not."""
    occ = agent_occupancy(sample)
    gt_hits = step_collisions(np.asarray(sample.gt_traj, dtype=np.float64), occ)
    return step_collisions(np.asarray(sample.plan, dtype=np.float64), occ) & ~gt_hits


def plan_collision_exact(samples: Sequence[PlanningSample]) -> dict[str, float]:
    """`plan_col_exact_{1,2,3}s` in percent, over the samples with all 6 future frames."""
    hits = np.asarray([sample_collisions(s) for s in samples if s.full_future], dtype=np.float64)
    hits = hits.reshape(-1, FUT_STEPS)
    out: dict[str, float] = {}
    for n in HORIZONS_S:
        steps = n * STEPS_PER_SECOND
        empty = hits.shape[0] == 0
        out[f"plan_col_exact_{n}s"] = float("nan") if empty else float(hits[:, :steps].mean() * 100.0)
    return out
