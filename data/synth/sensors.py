"""Sensor rig of the synthetic ego: nuScenes-like calibration of the six cameras and LIDAR_TOP.

Camera values are those of a nuScenes vehicle (intrinsics at 1600 x 900, scaled to the chosen image size).
LIDAR_TOP sits at [0.943713, 0, 1.84023] rotated by exactly -90 degrees of yaw, so its frame has x to the
ego's right and y forward (VAD's lidar frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netroller.data.index import CAMERAS
from netroller.data.synth.geometry import quaternion_matrix

NATIVE_WIDTH, NATIVE_HEIGHT = 1600, 900
LIDAR = "LIDAR_TOP"
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")

LIDAR_TRANSLATION = [0.943713, 0.0, 1.84023]
LIDAR_ROTATION = [0.7071067811865476, 0.0, 0.0, -0.7071067811865476]

# channel: (translation [m], rotation [w, x, y, z] camera -> ego, fx = fy, cx, cy at 1600 x 900)
_CAMERA_RIG = {
    "CAM_FRONT": (
        [1.70079118954, 0.0159456324149, 1.51095763913],
        [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
        1266.417203046554,
        816.2670197447984,
        491.50706579294757,
    ),
    "CAM_FRONT_RIGHT": (
        [1.5508477543, -0.493404796419, 1.49574800619],
        [0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485],
        1260.8474446004698,
        807.968244525554,
        495.3344268742088,
    ),
    "CAM_FRONT_LEFT": (
        [1.52387798135, 0.494631336551, 1.50932822144],
        [0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068],
        1272.5979470598488,
        826.6154653438537,
        479.75165288239636,
    ),
    "CAM_BACK": (
        [0.0283260309358, 0.00345136761476, 1.57910346144],
        [0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578],
        809.2209905677063,
        829.2196003259838,
        481.77842384512485,
    ),
    "CAM_BACK_LEFT": (
        [1.03569100218, 0.484795032713, 1.59097014818],
        [0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753],
        1256.7414812095406,
        792.1125740759628,
        492.7757465151356,
    ),
    "CAM_BACK_RIGHT": (
        [1.0148780988, -0.480568219723, 1.56239545128],
        [0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798],
        1259.5137405846733,
        807.2529053838625,
        501.19579884916527,
    ),
}


@dataclass(frozen=True)
class Camera:
    channel: str
    translation: list[float]  # camera origin in the ego frame
    rotation: list[float]  # [w, x, y, z], camera frame -> ego frame
    intrinsic: np.ndarray  # (3, 3) at the image size
    width: int
    height: int

    def ego_from_cam(self) -> np.ndarray:
        t = np.eye(4)
        t[:3, :3] = quaternion_matrix(self.rotation)
        t[:3, 3] = self.translation
        return t


def cameras(width: int, height: int) -> list[Camera]:
    """The six cameras with intrinsics scaled from 1600 x 900 to `width` x `height`."""
    sx, sy = width / NATIVE_WIDTH, height / NATIVE_HEIGHT
    out = []
    for ch in CAMERAS:
        t, q, f, cx, cy = _CAMERA_RIG[ch]
        n = math.sqrt(sum(v * v for v in q))
        k = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
        out.append(Camera(ch, list(t), [v / n for v in q], k, width, height))
    return out


def ego_from_lidar() -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = quaternion_matrix(LIDAR_ROTATION)
    t[:3, 3] = LIDAR_TRANSLATION
    return t
