"""LIDAR_TOP sweeps ray-cast against the ground plane and the annotated boxes (a 32-beam spinning lidar like
nuScenes' Velodyne HDL-32E), written as nuScenes `.pcd.bin` (float32 x, y, z, intensity, ring; lidar frame).

Hits on a box are nudged 1 cm inside it, so that counting points in boxes (`num_lidar_pts`) is not at the mercy
of float rounding on the box surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netroller.data.synth.raster import LABEL_INTENSITY, RESOLUTION

RINGS = 32
ELEVATIONS = np.radians(np.linspace(-30.67, 10.67, RINGS))
AZIMUTHS = 1080  # 1/3 degree
MAX_RANGE = 70.0
INSET = 0.01


@dataclass(frozen=True)
class LidarBox:
    """A box in the lidar frame: centre (3,), size (w, l, h), yaw about the lidar's z, and its intensity."""

    centre: np.ndarray
    size: tuple[float, float, float]
    yaw: float
    intensity: float


_AZ = np.arange(AZIMUTHS) * (2 * math.pi / AZIMUTHS)
_DIRS = np.stack(
    [
        np.cos(ELEVATIONS)[:, None] * np.cos(_AZ)[None, :],
        np.cos(ELEVATIONS)[:, None] * np.sin(_AZ)[None, :],
        np.repeat(np.sin(ELEVATIONS)[:, None], AZIMUTHS, axis=1),
    ],
    axis=-1,
)  # (RINGS, AZIMUTHS, 3) in the lidar frame


def sweep(
    height: float, world_from_lidar: np.ndarray, boxes: list[LidarBox], labels: np.ndarray, canvas_h: float
) -> np.ndarray:
    """(N, 5) float32 points of one sweep. `height`: the lidar's height over the ground (the lidar frame is
    level, so the ground is z = -height)."""
    t_best = np.full((RINGS, AZIMUTHS), np.inf)
    hit_box = np.full((RINGS, AZIMUTHS), -1, dtype=np.int64)
    dz = _DIRS[..., 2]
    down = dz < -1e-9
    t_best[down] = -height / dz[down]

    for bi, b in enumerate(boxes):
        cols = _azimuth_columns(b)
        if cols.size == 0:
            continue
        d = _DIRS[:, cols]  # (R, C, 3)
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        # Into the box frame: rotate by -yaw; the ray origin is the lidar origin.
        o = -b.centre
        o_l = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]])
        d_l = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], axis=-1)
        half = np.array([b.size[1], b.size[0], b.size[2]]) / 2.0  # x along the length
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d_l
            t1 = (-half - o_l) * inv
            t2 = (half - o_l) * inv
        tmin = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf).max(axis=-1)
        tmax = np.nan_to_num(np.maximum(t1, t2), nan=np.inf).min(axis=-1)
        hit = (tmin <= tmax) & (tmin > 0)
        sub_t = t_best[:, cols]
        better = hit & (tmin < sub_t)
        sub_t[better] = tmin[better]
        t_best[:, cols] = sub_t
        sub_b = hit_box[:, cols]
        sub_b[better] = bi
        hit_box[:, cols] = sub_b

    valid = t_best <= MAX_RANGE
    ring = np.broadcast_to(np.arange(RINGS)[:, None], valid.shape)[valid]
    t = t_best[valid]
    d = _DIRS[valid]
    pts = d * t[:, None]
    which = hit_box[valid]
    intensity = np.empty(len(t), dtype=np.float64)

    ground = which < 0
    if ground.any():
        g = pts[ground]
        gw = g @ world_from_lidar[:3, :3].T + world_from_lidar[:3, 3]
        h, w = labels.shape
        col = np.clip(np.floor(gw[:, 0] / RESOLUTION).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(canvas_h / RESOLUTION - gw[:, 1] / RESOLUTION).astype(np.int64), 0, h - 1)
        intensity[ground] = LABEL_INTENSITY[labels[row, col]]
        pts[ground, 2] = -height  # exactly on the ground plane
    for bi in np.unique(which[~ground]):
        m = which == bi
        b = boxes[bi]
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        rel = pts[m] - b.centre
        lx = c * rel[:, 0] + s * rel[:, 1]
        ly = -s * rel[:, 0] + c * rel[:, 1]
        hl, hw, hh = b.size[1] / 2 - INSET, b.size[0] / 2 - INSET, b.size[2] / 2 - INSET
        lx, ly, lz = np.clip(lx, -hl, hl), np.clip(ly, -hw, hw), np.clip(rel[:, 2], -hh, hh)
        pts[m] = np.stack(
            [b.centre[0] + c * lx - s * ly, b.centre[1] + s * lx + c * ly, b.centre[2] + lz], axis=1
        )
        intensity[m] = b.intensity
    out = np.empty((len(t), 5), dtype=np.float32)
    out[:, :3] = pts
    out[:, 3] = intensity
    out[:, 4] = ring
    return out


def _azimuth_columns(b: LidarBox) -> np.ndarray:
    """Azimuth columns whose rays can reach the box (its corners' angular extent, padded by one column)."""
    dist = float(np.hypot(b.centre[0], b.centre[1]))
    if dist - 0.5 * math.hypot(b.size[0], b.size[1]) > MAX_RANGE:
        return np.zeros(0, dtype=np.int64)
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    xs = np.array([1, 1, -1, -1]) * b.size[1] / 2
    ys = np.array([1, -1, -1, 1]) * b.size[0] / 2
    cx = b.centre[0] + c * xs - s * ys
    cy = b.centre[1] + s * xs + c * ys
    if np.all(np.abs(cx) < 1e-6) and np.all(np.abs(cy) < 1e-6):
        return np.arange(AZIMUTHS)
    a0 = math.atan2(b.centre[1], b.centre[0])
    rel = np.angle(np.exp(1j * (np.arctan2(cy, cx) - a0)))
    lo, hi = a0 + rel.min(), a0 + rel.max()
    step = 2 * math.pi / AZIMUTHS
    i0, i1 = math.floor(lo / step) - 1, math.ceil(hi / step) + 1
    return np.arange(i0, i1 + 1) % AZIMUTHS
