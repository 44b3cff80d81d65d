"""Open-loop planning metrics in VAD's conventions: L2 displacement and ST-P3 box collision.

Frame: everything here is the sample's lidar frame of the index (`netroller.data.index`): x to the right,
y forward, positions in metres at 0.5 s steps. The collision grid is laid out in the same frame (cell
(i, j) covers x in [-50 + 0.5 i, -50 + 0.5 (i + 1)) and y likewise), so no axis swap happens anywhere; ST-P3
swaps axes only because its segmentation is indexed (row = forward); the geometry is the same.

Conventions (DESIGN.md section 6):
- `plan_l2_Ns` (VAD): the mean over steps 0.5 s .. N s of the per-step displacement, averaged over samples.
- `plan_l2_at_Ns` (UniAD): the displacement at N s only, averaged over samples.
- `plan_col_Ns` (ST-P3 / VAD `obj_box_col`): fraction of colliding steps among the first 2N, x100 %,
  averaged over samples; a step where the GT ego box already collides counts as not colliding.
Only samples with all 6 future keyframes (ego_fut_mask all 1) are scored, as VAD does.

Rasterization: a cell is occupied by a box when the cell's centre lies inside the box. Agent boxes of the
vehicle and human classes are moved along their GT futures (their heading follows the step's displacement
when they move more than 0.1 m, else it is kept); agents whose future is masked at a step are dropped at
that step. The ego box (1.85 m wide, 4.084 m long, its centre 0.5 m ahead of the lidar origin along the
heading) is placed at each planned position with the heading of the planned segment that ends there (the
first segment starts at the origin; a segment shorter than 1 cm keeps the previous heading, facing +y at
the start). ST-P3 quantizes the ego footprint once and shifts it by whole cells; placing it exactly at each
step differs from that by at most one cell at the box's edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netroller.data.index import DETECTION_CLASSES, FUT_STEPS

HORIZONS_S = (1, 2, 3)
STEPS_PER_SECOND = 2

# ST-P3's BEV grid: 200 x 200 cells of 0.5 m over [-50, 50] m.
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


def _full_future(gt_mask: np.ndarray) -> np.ndarray:
    return np.all(np.asarray(gt_mask) > 0.5, axis=-1)


def plan_l2(pred: np.ndarray, gt: np.ndarray, gt_mask: np.ndarray) -> dict[str, float]:
    """L2 errors of planned positions `(S, 6, 2)` against GT `(S, 6, 2)`, masks `(S, 6)`.

    Returns `plan_l2_{1,2,3}s` (VAD: mean over the steps up to N s) and `plan_l2_at_{1,2,3}s` (UniAD: at
    N s), over the samples whose 6 future frames all exist; NaN when there is no such sample.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    keep = _full_future(gt_mask)
    dist = np.linalg.norm(pred[keep] - gt[keep], axis=-1)  # (S', 6)
    out: dict[str, float] = {}
    for n in HORIZONS_S:
        steps = n * STEPS_PER_SECOND
        empty = dist.shape[0] == 0
        out[f"plan_l2_{n}s"] = float("nan") if empty else float(dist[:, :steps].mean())
        out[f"plan_l2_at_{n}s"] = float("nan") if empty else float(dist[:, steps - 1].mean())
    return out


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


def agent_occupancy(
    boxes: np.ndarray, labels: np.ndarray, fut_traj: np.ndarray, fut_mask: np.ndarray
) -> np.ndarray:
    """(6, 200, 200) occupancy of the vehicle and human GT boxes moved along their GT futures.

    `boxes` (N, 9) in the index convention, `fut_traj` (N, 6, 2) positions relative to each box centre.
    """
    occ = np.zeros((FUT_STEPS, GRID_SIZE, GRID_SIZE), dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    fut_traj = np.asarray(fut_traj, dtype=np.float64).reshape(-1, FUT_STEPS, 2)
    fut_mask = np.asarray(fut_mask).reshape(-1, FUT_STEPS)
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


def sample_collisions(
    plan: np.ndarray,
    gt_traj: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    fut_traj: np.ndarray,
    fut_mask: np.ndarray,
) -> np.ndarray:
    """(6,) bool per step: the plan collides there and the GT ego trajectory does not."""
    occ = agent_occupancy(boxes, labels, fut_traj, fut_mask)
    gt_hits = step_collisions(np.asarray(gt_traj, dtype=np.float64), occ)
    return step_collisions(np.asarray(plan, dtype=np.float64), occ) & ~gt_hits


def plan_collision(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """`plan_col_{1,2,3}s` in percent, over samples with all 6 future frames.

    Each sample is a mapping with `plan` (6, 2), `gt_traj` (6, 2), `gt_mask` (6,), `boxes` (N, 9),
    `labels` (N,), `fut_traj` (N, 6, 2), `fut_mask` (N, 6), all in the sample's lidar frame.
    """
    per_sample = []
    for s in samples:
        if not _full_future(s["gt_mask"]):
            continue
        per_sample.append(
            sample_collisions(s["plan"], s["gt_traj"], s["boxes"], s["labels"], s["fut_traj"], s["fut_mask"])
        )
    hits = np.asarray(per_sample, dtype=np.float64).reshape(-1, FUT_STEPS)
    out: dict[str, float] = {}
    for n in HORIZONS_S:
        steps = n * STEPS_PER_SECOND
        out[f"plan_col_{n}s"] = float("nan") if hits.shape[0] == 0 else float(hits[:, :steps].mean() * 100.0)
    return out
