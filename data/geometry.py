"""Rigid-transform helpers for nuScenes records: 4x4 matrices from (translation, quaternion), point
transforms, and the planar (yaw-only) global -> lidar map used for map vectors (VAD's convention)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyquaternion import Quaternion


def pose_matrix(translation: Sequence[float], rotation: Sequence[float]) -> np.ndarray:
    """(4, 4) matrix of a nuScenes pose record: maps points of the child frame into the parent frame.

    `rotation` is a nuScenes quaternion `[w, x, y, z]`.
    """
    out = np.eye(4)
    out[:3, :3] = Quaternion(rotation).rotation_matrix
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform, without a general matrix inverse."""
    out = np.eye(4)
    rot = transform[:3, :3]
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ transform[:3, 3]
    return out


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (..., 3) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ transform[:3, :3].T + transform[:3, 3]


def rotate(transform: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) free vectors (velocities) by the rotation part of a (4, 4) transform."""
    return np.asarray(vectors, dtype=np.float64) @ transform[:3, :3].T


def yaw_of(rotation: np.ndarray) -> float:
    """Heading of a (3, 3) rotation's x-axis projected on the ground plane (the devkit's `quaternion_yaw`)."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def planar_global_to_local(lidar_to_global: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Shapely `affine_transform` coefficients `[a, b, d, e, xoff, yoff]` taking global map coordinates to
    the lidar frame using only the lidar's ground position and yaw, as VAD's map extraction does."""
    tx, ty = float(lidar_to_global[0, 3]), float(lidar_to_global[1, 3])
    yaw = yaw_of(lidar_to_global[:3, :3])
    c, s = np.cos(yaw), np.sin(yaw)
    # local = R(yaw)^T (p - t)
    return (c, s, -s, c, -(c * tx + s * ty), s * tx - c * ty)
