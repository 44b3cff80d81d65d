"""VAD's 18-value CAN-bus vector per sample, from the nuScenes CAN-bus expansion read by the devkit.

Two steps, as in VAD (and BEVFormer, whose code VAD keeps):
1. Its data converter reads the scene's `pose` messages through `NuScenesCanBus` and lays out
   `pos (3), orientation (4), accel (3), rotation_rate (3), vel (3), 0, 0`. Its loop stops at the first
   message later than the sample's timestamp, takes `pos` and `orientation` from the message before that one
   (the first message when none precedes the sample) but the other nine values from the message that
   stopped the loop (the last message when none is later). That is what VAD's models were trained on, so it
   is kept. A scene without CAN-bus data gets 18 zeros.
2. Its dataset (`get_data_info`) overwrites `[0:3]` with the ego translation of the sample's LIDAR_TOP
   keyframe, `[-1]` with the ego yaw in degrees in [0, 360) and `[-2]` with the same angle in radians. It
   means `[3:7]` to hold the ego rotation quaternion, but it assigns a pyquaternion `Quaternion` to the numpy
   slice; numpy converts it with `float()` (the quaternion's real part) and broadcasts it, so `[3:7]` holds
   `w, w, w, w`. The released checkpoints were trained on that, so it is kept too.

So the final vector's devkit part is `[7:16]`; `vad_can_bus` returns the final vector (float64), which is
what the index stores. The model's frame-to-frame delta (`[:3]` and `[-1]` minus the previous frame's) is
applied later, by the model or its batch.

The devkit's `NuScenesCanBus(dataroot)` looks for `<dataroot>/can_bus/<scene>_pose.json`. It raises a bare
`Exception` for the scenes it lists as having no CAN-bus data (`can_blacklist`) and `FileNotFoundError` for a
missing file; VAD's converter turns every failure into zeros. Here a blacklisted scene, a missing file, a
scene name outside the devkit's `scene-NNNN` pattern and an empty message list give zeros (and are reported
by `prepare`); a file that is present but broken is an error naming it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netroller.data.index import CAN_BUS_SIZE
from netroller.errors import DataError, MissingPathError

# Keys after pos and orientation, in the converter's order (the real files' key order, alphabetical).
_MOTION_KEYS = ("accel", "rotation_rate", "vel")
_SCENE_NAME = re.compile(r"^scene-\d{4}$")  # what `NuScenesCanBus.get_messages` accepts


def find_can_bus_dir(dataroot: Path, can_bus_root: Path | None) -> Path | None:
    """The folder holding `<scene>_pose.json` files, or None when there is none.

    `can_bus_root` is the folder that holds `can_bus/` (the devkit's `dataroot`); None looks in the nuScenes
    dataroot first (the devkit's default layout, the synthetic set's) and then beside it (VAD's layout:
    `data/can_bus` next to `data/nuscenes`).
    """
    if can_bus_root is not None:
        return Path(can_bus_root) / "can_bus"
    for parent in (Path(dataroot), Path(dataroot).resolve().parent):
        if (parent / "can_bus").is_dir():
            return parent / "can_bus"
    return None


class PoseMessages:
    """The `pose` messages of every scene, through the devkit's `NuScenesCanBus`, each file read once."""

    def __init__(self, can_bus_dir: Path | None):
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        self.dir = None if can_bus_dir is None else Path(can_bus_dir)
        self._api = None
        if self.dir is not None:
            if not self.dir.is_dir():
                raise MissingPathError(f"CAN-bus folder not found: {self.dir}")
            self._api = NuScenesCanBus(dataroot=str(self.dir.parent))
        self._cache: dict[str, list[dict] | None] = {}

    def get(self, scene_name: str) -> list[dict] | None:
        """The scene's pose messages in file order, or None when the scene has no CAN-bus data."""
        if scene_name not in self._cache:
            self._cache[scene_name] = self._load(scene_name)
        return self._cache[scene_name]

    def _load(self, scene_name: str) -> list[dict] | None:
        if self._api is None or not _SCENE_NAME.match(scene_name):
            return None
        if int(scene_name[-4:]) in self._api.can_blacklist:
            return None
        path = self.dir / f"{scene_name}_pose.json"
        if not path.is_file():
            return None
        try:
            messages = self._api.get_messages(scene_name, "pose", print_warnings=False)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(messages, list):
            raise DataError(f"{path}: expected a list of pose messages, got {type(messages).__name__}")
        for i, m in enumerate(messages):
            _check_message(m, path, i)
        return messages or None


def _check_message(m: object, path: Path, i: int) -> None:
    sizes = {"utime": None, "pos": 3, "orientation": 4, "accel": 3, "rotation_rate": 3, "vel": 3}
    if not isinstance(m, dict):
        raise DataError(f"{path}: message {i} is not an object")
    for key, n in sizes.items():
        if key not in m:
            raise DataError(f"{path}: message {i} lacks {key!r}")
        if n is not None and (not isinstance(m[key], list) or len(m[key]) != n):
            raise DataError(f"{path}: message {i} has {key}={m[key]!r}, expected {n} numbers")


def converter_can_bus(messages: Sequence[dict] | None, timestamp: int) -> np.ndarray:
    """(18,) float64: what VAD's converter stores for a sample at `timestamp` (µs); zeros without data."""
    if not messages:
        return np.zeros(CAN_BUS_SIZE)
    # The converter's loop: `stop` is the first message later than the sample (or the last one).
    stop = next((i for i, m in enumerate(messages) if m["utime"] > timestamp), len(messages) - 1)
    before = messages[stop - 1] if stop > 0 and messages[stop]["utime"] > timestamp else messages[stop]
    values = [*before["pos"], *before["orientation"]]
    for key in _MOTION_KEYS:
        values.extend(messages[stop][key])
    return np.asarray([*values, 0.0, 0.0], dtype=np.float64)


def patch_angle_degrees(rotation: Sequence[float]) -> float:
    """The ego yaw in degrees in [0, 360), as VAD's dataset computes it (devkit `quaternion_yaw`)."""
    from nuscenes.eval.common.utils import quaternion_yaw
    from pyquaternion import Quaternion

    angle = quaternion_yaw(Quaternion(list(rotation))) / np.pi * 180
    return angle + 360 if angle < 0 else angle


def vad_can_bus(
    messages: Sequence[dict] | None,
    timestamp: int,
    ego_translation: Sequence[float],
    ego_rotation: Sequence[float],
) -> np.ndarray:
    """(18,) float64: the CAN-bus vector VAD's dataset hands the model for one sample.

    `ego_translation` and `ego_rotation` ([w, x, y, z]) are the `ego_pose` record of the sample's LIDAR_TOP
    keyframe, as stored (not normalised, as VAD reads them).
    """
    can_bus = converter_can_bus(messages, timestamp)
    can_bus[:3] = np.asarray(ego_translation, dtype=np.float64)
    can_bus[3:7] = float(ego_rotation[0])  # VAD's `can_bus[3:7] = Quaternion(...)`: the real part, 4 times
    angle = patch_angle_degrees(ego_rotation)
    can_bus[-2] = angle / 180 * math.pi
    can_bus[-1] = angle
    return can_bus
