"""Small geometry kit of the synthetic world: poses, quaternions, box corners, and paths made of lines and arcs.

Conventions are nuScenes': global frame x east, y north, z up; yaw counter-clockwise from +x; quaternions
[w, x, y, z]; a box's size is (width, length, height) with the length along its heading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def yaw_quaternion(yaw: float) -> list[float]:
    """[w, x, y, z] of a rotation by `yaw` about +z."""
    return [math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)]


def quaternion_matrix(q: list[float] | np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion [w, x, y, z]."""
    w, x, y, z = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def pose_matrix(translation, rotation) -> np.ndarray:
    """4x4 homogeneous transform from a translation and a [w, x, y, z] quaternion."""
    t = np.eye(4)
    t[:3, :3] = quaternion_matrix(rotation)
    t[:3, 3] = np.asarray(translation, dtype=float)
    return t


def box_corners(center, size, yaw: float) -> np.ndarray:
    """(8, 3) corners of an upright box. Order: bottom ring then top ring, each front-left, front-right,
    rear-right, rear-left (front = +heading)."""
    w, length, h = size
    c, s = math.cos(yaw), math.sin(yaw)
    xs = np.array([length, length, -length, -length]) / 2.0
    ys = np.array([w, -w, -w, w]) / 2.0
    gx = center[0] + c * xs - s * ys
    gy = center[1] + s * xs + c * ys
    zb = np.full(4, center[2] - h / 2.0)
    zt = np.full(4, center[2] + h / 2.0)
    bottom = np.stack([gx, gy, zb], axis=1)
    top = np.stack([gx, gy, zt], axis=1)
    return np.concatenate([bottom, top], axis=0)


# Faces of `box_corners` as corner indices, counter-clockwise seen from outside.
BOX_FACES = (
    (4, 5, 6, 7),  # top
    (0, 3, 2, 1),  # bottom
    (0, 1, 5, 4),  # front
    (2, 3, 7, 6),  # rear
    (1, 2, 6, 5),  # right
    (3, 0, 4, 7),  # left
)


@dataclass(frozen=True)
class Line:
    """Straight piece: from `start` along `heading` for `length` metres."""

    start: tuple[float, float]
    heading: float
    length: float

    def end(self) -> tuple[float, float, float]:
        return (
            self.start[0] + self.length * math.cos(self.heading),
            self.start[1] + self.length * math.sin(self.heading),
            self.heading,
        )

    def poses(self, s: np.ndarray) -> np.ndarray:
        c, sn = math.cos(self.heading), math.sin(self.heading)
        return np.stack(
            [self.start[0] + s * c, self.start[1] + s * sn, np.full_like(s, self.heading)], axis=-1
        )

    def curvature(self, s: np.ndarray) -> np.ndarray:
        return np.zeros_like(s)


@dataclass(frozen=True)
class Arc:
    """Circular piece: from `start` with `heading`, turning left (`turn` = +1) or right (-1) on `radius`
    through `angle` radians."""

    start: tuple[float, float]
    heading: float
    radius: float
    turn: int
    angle: float

    @property
    def length(self) -> float:
        return self.radius * self.angle

    def center(self) -> tuple[float, float]:
        nx, ny = -math.sin(self.heading) * self.turn, math.cos(self.heading) * self.turn
        return self.start[0] + self.radius * nx, self.start[1] + self.radius * ny

    def end(self) -> tuple[float, float, float]:
        p = self.poses(np.array([self.length]))[0]
        return float(p[0]), float(p[1]), float(p[2])

    def poses(self, s: np.ndarray) -> np.ndarray:
        cx, cy = self.center()
        th = s / self.radius * self.turn
        # Angle of the start point seen from the centre.
        a0 = self.heading - self.turn * math.pi / 2.0
        a = a0 + th
        return np.stack(
            [cx + self.radius * np.cos(a), cy + self.radius * np.sin(a), self.heading + th], axis=-1
        )

    def curvature(self, s: np.ndarray) -> np.ndarray:
        """Signed curvature (1/m, positive turning left): the heading's derivative along the arc."""
        return np.full_like(s, self.turn / self.radius)


Piece = Line | Arc


class Path:
    """A chain of pieces, evaluated by arc length; beyond either end it extends straight along the end heading."""

    def __init__(self, pieces: list[Piece]):
        if not pieces:
            raise ValueError("a path needs at least one piece")
        self.pieces = list(pieces)
        self.offsets = np.concatenate([[0.0], np.cumsum([p.length for p in self.pieces])])

    @property
    def length(self) -> float:
        return float(self.offsets[-1])

    def poses(self, s) -> np.ndarray:
        """(..., 3) x, y, yaw at arc lengths `s`."""
        return self._per_piece(s, lambda piece, u: piece.poses(u), (3,))

    def curvature(self, s) -> np.ndarray:
        """(...) signed curvature (1/m, positive turning left) at arc lengths `s`, per piece as `poses`."""
        return self._per_piece(s, lambda piece, u: piece.curvature(u), ())

    def _per_piece(self, s, evaluate, trailing: tuple[int, ...]) -> np.ndarray:
        """`evaluate(piece, arc length within it)` at every `s`, each on the piece that `s` falls on."""
        s = np.asarray(s, dtype=float)
        flat = s.reshape(-1)
        out = np.empty((flat.size, *trailing))
        idx = np.clip(np.searchsorted(self.offsets, flat, side="right") - 1, 0, len(self.pieces) - 1)
        for i, piece in enumerate(self.pieces):
            m = idx == i
            if m.any():
                out[m] = evaluate(piece, flat[m] - self.offsets[i])
        return out.reshape(s.shape + trailing)
