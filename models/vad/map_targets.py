"""Map ground truth as VAD trains on it: each GT map element (a polyline in metres, lidar frame) resampled to
a fixed number of points, with every point order that describes the same element (the official dataset's
`LiDARInstanceLines` with `map_gt_shift_pts_pattern='v2'`, `fixed_num=20`, `padding_value=-10000`).

Orders: an open polyline has two (as sampled, and reversed). A closed one (first vertex == last vertex, exactly)
has one per starting vertex: the ring is rolled to start at each of its vertices, closed again, and resampled
along its length. The order count is fixed at `num_pts - 1`; a polyline fills the unused orders with
-10000 (so no prediction ever matches them); a ring with more vertices than that keeps a random subset of
its rolls, as the official does (pass `rng` for a reproducible choice). Points and boxes are clamped to the
perception range before the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from shapely.geometry import LineString
from torch import Tensor

from netroller.errors import DataError
from netroller.models.vad.config import VAD_PC_RANGE

PADDING_VALUE = -10000.0
"""Fills the orders an element does not have (the official `padding_value`)."""


@dataclass
class MapGT:
    """One sample's map ground truth; M elements, S = num_pts - 1 orders, P = num_pts points, metres."""

    labels: Tensor  # [M] long: 0 divider, 1 ped_crossing, 2 boundary
    boxes: Tensor  # [M, 4] float32 xmin, ymin, xmax, ymax of each polyline, clamped to the range
    points: Tensor  # [M, P, 2] float32 the polyline resampled at P equally spaced arc lengths, clamped
    shifts: Tensor  # [M, S, P, 2] float32 every equivalent order, padded with PADDING_VALUE

    def to(self, device: torch.device | str) -> MapGT:
        return MapGT(*(t.to(device) for t in (self.labels, self.boxes, self.points, self.shifts)))


def _resample(line: LineString, distances: np.ndarray) -> np.ndarray:
    """[P, 2] points of `line` at the given arc lengths (shapely's interpolate, as the official)."""
    return np.array([line.interpolate(d).coords[0] for d in distances], dtype=np.float64).reshape(-1, 2)


def _orders(coords: np.ndarray, num_pts: int, rng: np.random.RandomState | None) -> np.ndarray:
    """[S', P, 2] float64 equivalent orders of one polyline, S' <= num_pts - 1 (before clamping/padding)."""
    line = LineString(coords)
    distances = np.linspace(0, line.length, num_pts)
    if not np.equal(coords[0], coords[-1]).all():
        sampled = _resample(line, distances)
        return np.stack([sampled, np.flip(sampled, axis=0)])
    ring = coords[:-1]
    rolls = []
    for shift in range(len(coords) - 1):
        rolled = np.roll(ring, shift, axis=0)
        rolls.append(_resample(LineString(np.concatenate([rolled, rolled[:1]])), distances))
    orders = np.stack(rolls)
    if len(orders) > num_pts - 1:
        # The official draws from numpy's global generator here (np.random.choice).
        pick = (rng if rng is not None else np.random).choice(len(orders), num_pts - 1, replace=False)
        orders = orders[pick]
    return orders


def _clamp_xy(t: Tensor, max_x: float, max_y: float) -> Tensor:
    t[..., 0] = t[..., 0].clamp(-max_x, max_x)
    t[..., 1] = t[..., 1].clamp(-max_y, max_y)
    return t


def prepare_map_gt(
    polylines: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    num_pts: int = 20,
    pc_range: Sequence[float] = VAD_PC_RANGE,
    rng: np.random.RandomState | None = None,
) -> MapGT:
    """The map ground truth of one sample from its elements' polylines ([n_i, 2] metres, lidar frame; a
    closed element repeats its first vertex at the end) and class indices.

    The clamp is to +-half the range's extent, as the official (its patch is centred on the ego).
    """
    if len(polylines) != len(labels):
        raise DataError(f"map GT: {len(polylines)} polylines but {len(labels)} labels")
    max_x = (pc_range[3] - pc_range[0]) / 2
    max_y = (pc_range[4] - pc_range[1]) / 2
    boxes, points, shifts = [], [], []
    for i, poly in enumerate(polylines):
        coords = np.asarray(poly, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) < 2:
            raise DataError(f"map GT polyline {i} must be [n >= 2, 2] metres, got shape {coords.shape}")
        line = LineString(coords)
        boxes.append(np.array(line.bounds, dtype=np.float64))
        points.append(_resample(line, np.linspace(0, line.length, num_pts)))
        # float64 -> float32 first, then the clamp, then the padding: the official order.
        orders = _clamp_xy(torch.from_numpy(_orders(coords, num_pts, rng)).float(), max_x, max_y)
        pad = torch.full((num_pts - 1 - len(orders), num_pts, 2), PADDING_VALUE)
        shifts.append(torch.cat([orders, pad]))
    if not polylines:
        return MapGT(
            labels=torch.zeros(0, dtype=torch.long),
            boxes=torch.zeros(0, 4),
            points=torch.zeros(0, num_pts, 2),
            shifts=torch.zeros(0, num_pts - 1, num_pts, 2),
        )
    box_t = torch.from_numpy(np.stack(boxes)).float()
    box_t[:, 0::2] = box_t[:, 0::2].clamp(-max_x, max_x)
    box_t[:, 1::2] = box_t[:, 1::2].clamp(-max_y, max_y)
    return MapGT(
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.long),
        boxes=box_t,
        points=_clamp_xy(torch.from_numpy(np.stack(points)).float(), max_x, max_y),
        shifts=torch.stack(shifts),
    )
