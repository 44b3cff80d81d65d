"""The `prepare` stage: walk nuScenes once with the devkit and write the sample index (one row per keyframe).

Every field follows VAD's info-file conventions (see `netroller.data.index` for the frames). Where VAD's
converter leaves a choice, this module documents what it does:
- Trajectories are stored as positions. Future steps past the scene's end have mask 0 and repeat the last
  valid position (what VAD's per-step offsets, zero-padded, sum to). Past steps before the scene's start have
  mask 0 and are extrapolated at constant velocity, as VAD fills them.
- The ego position is the LIDAR_TOP origin (VAD's `get_global_sensor_pose`), so the current one is (0, 0).
- `command` comes from the ego position at 3 s, or from the last valid future position when the scene ends
  sooner (VAD pads with it); the last keyframe of a scene, with no future, gets "straight".
- `ego_velocity`: the lidar origin's displacement from the previous keyframe divided by the time between
  them, in the current lidar frame (the next keyframe on a scene's first frame; zero for a one-sample scene).
- GT boxes keep VAD's `valid_flag` (num_lidar_pts + num_radar_pts > 0) and the detection classes only.
  Each box's `gt_categories` entry is its category's position in the devkit's category table and its
  `gt_fut_yaw` the heading changes along its future, both as VAD's converter computes them (`lcf_feat`
  type and `gt_agent_fut_yaw`, the latter summed into changes from the current heading).
- `can_bus`: VAD's converter + dataset steps (`netroller.data.can_bus`), from the CAN-bus expansion's pose
  messages through the devkit. A scene without CAN-bus data (no `can_bus/` folder at all, a scene the devkit
  lists as having none, a missing file) gets zeros for the devkit part, as VAD's converter gives it; such
  scenes are printed in a summary line and listed in the index metadata (`scenes_without_can_bus`).

Usage:
    netroller prepare --dataroot work/nuscenes --version v1.0-mini --out work/index.parquet
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from netroller.data.can_bus import PoseMessages, find_can_bus_dir, vad_can_bus
from netroller.data.geometry import apply, invert, pose_matrix, rotate
from netroller.data.index import (
    CAMERAS,
    DETECTION_CLASSES,
    FUT_STEPS,
    HIS_STEPS,
    IndexMeta,
    SampleRecord,
    read_index,
    write_index,
)
from netroller.data.map_vectors import MapCache
from netroller.data.nusc import check_version, open_nuscenes, scene_splits, split_names
from netroller.errors import ConfigError, DataError, MissingPathError

LIDAR = "LIDAR_TOP"
TURN_THRESHOLD = 2.0  # m of lateral offset at 3 s (VAD)


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    dataroot: Path
    """nuScenes root: holds the version folder, `samples/`, `maps/`."""
    version: str = "v1.0-mini"
    """`v1.0-mini`, `v1.0-trainval` or `v1.0-test`."""
    out: Path
    """The index file to write (Parquet)."""
    can_bus_root: Path | None = None
    """The folder holding the CAN-bus expansion's `can_bus/` (the devkit's `NuScenesCanBus` dataroot). None:
    `can_bus/` in the dataroot, else beside it (VAD's `data/can_bus` next to `data/nuscenes`), else none."""
    overwrite: bool = True
    """Rebuild and atomically replace an existing index (prepare takes seconds on mini-sized data).
    False: an existing index built from the same dataroot, version and CAN-bus folder is kept as it is and
    returned; one built from something else is refused with an error naming the differing field."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataroot", Path(self.dataroot))
        object.__setattr__(self, "out", Path(self.out))
        if self.can_bus_root is not None:
            object.__setattr__(self, "can_bus_root", Path(self.can_bus_root))
        check_version(self.version)
        if self.out.is_dir():
            raise ConfigError(
                f"out: {self.out} is a folder; expected an index file path such as index.parquet"
            )


def prepare(cfg: PrepareConfig) -> Path:
    """Write the index of every keyframe sample of `cfg.version` to `cfg.out`; returns `cfg.out`."""
    if not cfg.overwrite and cfg.out.exists():
        _check_existing(cfg)
        return cfg.out
    nusc = open_nuscenes(cfg.dataroot, cfg.version)
    can_bus_dir = find_can_bus_dir(cfg.dataroot, cfg.can_bus_root)
    builder = _RecordBuilder(nusc, cfg.dataroot, cfg.version, PoseMessages(can_bus_dir))
    samples = builder.keyframes()
    records = [
        builder.record(token, frame)
        for token, frame in tqdm(samples, desc="prepare", unit="sample", disable=None)
    ]
    without = builder.scenes_without_can_bus()
    meta = IndexMeta(
        dataroot=str(cfg.dataroot.resolve()),
        version=cfg.version,
        can_bus_dir=str(can_bus_dir.resolve()) if can_bus_dir is not None else "",
        scenes_without_can_bus=without,
    )
    path = write_index(records, cfg.out, meta)
    print(summary(len(records), len(nusc.scene), can_bus_dir, without), file=sys.stderr, flush=True)
    return path


def summary(samples: int, scenes: int, can_bus_dir: Path | None, without: tuple[str, ...]) -> str:
    """The one line `prepare` prints: what it indexed and which scenes lack CAN-bus data."""
    line = f"prepare: {samples} samples of {scenes} scenes"
    if can_bus_dir is None:
        return f"{line}; no can_bus/ folder found: all {scenes} scenes without CAN-bus data (zeros)"
    line += f"; CAN bus from {can_bus_dir}: {len(without)} of {scenes} scenes without data (zeros)"
    if without:
        shown = ", ".join(without[:5]) + (", ..." if len(without) > 5 else "")
        line += f": {shown}"
    return line


def _check_existing(cfg: PrepareConfig) -> None:
    existing = read_index(cfg.out).meta
    can_bus_dir = find_can_bus_dir(cfg.dataroot, cfg.can_bus_root)
    wanted = {
        "dataroot": str(cfg.dataroot.resolve()),
        "version": cfg.version,
        "can_bus_dir": str(can_bus_dir.resolve()) if can_bus_dir is not None else "",
    }
    for field, value in wanted.items():
        if getattr(existing, field) != value:
            raise ConfigError(
                f"{cfg.out} was built with {field}={getattr(existing, field)!r}, not {value!r}; "
                f"re-run with overwrite to replace it"
            )


class _RecordBuilder:
    """Computes `SampleRecord`s from one loaded `NuScenes`."""

    def __init__(self, nusc, dataroot: Path, version: str, can_bus: PoseMessages) -> None:
        self.nusc = nusc
        self.dataroot = Path(dataroot)
        self.version = version
        self.can_bus = can_bus
        self.maps = MapCache(self.dataroot)
        self._splits = scene_splits(version)
        self._lidar_pose: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self._no_can_bus: dict[str, None] = {}  # scene names in table order
        self._category_index = {c["name"]: i for i, c in enumerate(nusc.category)}

    def scenes_without_can_bus(self) -> tuple[str, ...]:
        """Names of the scenes recorded so far whose CAN-bus data was missing."""
        return tuple(self._no_can_bus)

    # -- walking the dataset -------------------------------------------------------------------------------
    def keyframes(self) -> list[tuple[str, int]]:
        """(sample token, frame index) for every keyframe, scene by scene in table order, each scene in time order.

        Also checks, before any per-sample work, that every scene has a split and a loadable map.
        """
        out = []
        for scene in self.nusc.scene:
            if scene["name"] not in self._splits:
                raise DataError(
                    f"scene {scene['name']!r} of {self.version} is in none of the devkit splits "
                    f"{', '.join(split_names(self.version))}"
                )
            self.maps.get(self._map_name(scene))
            token, frame = scene["first_sample_token"], 0
            while token:
                out.append((token, frame))
                token = self.nusc.get("sample", token)["next"]
                frame += 1
        return out

    def _map_name(self, scene: dict) -> str:
        return self.nusc.get("log", scene["log_token"])["location"]

    def _sample_data(self, sample: dict, channel: str) -> dict:
        token = sample["data"].get(channel)
        if token is None:
            raise DataError(f"sample {sample['token']} has no {channel} keyframe in sample_data")
        return self.nusc.get("sample_data", token)

    def lidar_pose(self, sample_token: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(lidar_to_ego, ego_to_global, timestamp) of a sample's LIDAR_TOP keyframe."""
        if sample_token not in self._lidar_pose:
            sd = self._sample_data(self.nusc.get("sample", sample_token), LIDAR)
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
            self._lidar_pose[sample_token] = (
                pose_matrix(cs["translation"], cs["rotation"]),
                pose_matrix(pose["translation"], pose["rotation"]),
                int(sd["timestamp"]),
            )
        return self._lidar_pose[sample_token]

    def _lidar_to_global(self, sample_token: str) -> np.ndarray:
        l2e, e2g, _ = self.lidar_pose(sample_token)
        return e2g @ l2e

    # -- one record ----------------------------------------------------------------------------------------
    def record(self, sample_token: str, frame_index: int) -> SampleRecord:
        nusc = self.nusc
        sample = nusc.get("sample", sample_token)
        scene = nusc.get("scene", sample["scene_token"])
        map_name = self._map_name(scene)
        lidar_to_ego, ego_to_global, _ = self.lidar_pose(sample_token)
        lidar_to_global = ego_to_global @ lidar_to_ego
        global_to_lidar = invert(lidar_to_global)

        cam_paths, sizes, intrinsics, cam_to_lidar = self._cameras(sample, global_to_lidar)
        can_bus = self._can_bus(sample, scene["name"])
        fut, fut_mask, his, his_mask, velocity = self._ego_motion(sample, global_to_lidar)
        boxes, labels, num_pts, inst_tokens, agent_fut, agent_mask, agent_yaw, categories = self._boxes(
            sample, global_to_lidar
        )
        map_vectors, map_labels = self.maps.vectors(map_name, lidar_to_global)

        return SampleRecord(
            sample_token=sample_token,
            scene_token=scene["token"],
            scene_name=scene["name"],
            split=self._splits[scene["name"]],
            frame_index=frame_index,
            timestamp=int(sample["timestamp"]),
            map_name=map_name,
            cam_paths=cam_paths,
            cam_image_sizes=sizes,
            cam_intrinsics=intrinsics,
            cam_to_lidar=cam_to_lidar,
            lidar_to_ego=lidar_to_ego,
            ego_to_global=ego_to_global,
            can_bus=can_bus,
            ego_velocity=velocity,
            ego_his_traj=his,
            ego_his_mask=his_mask,
            ego_fut_traj=fut,
            ego_fut_mask=fut_mask,
            command=command_from_future(fut, fut_mask),
            gt_boxes=boxes,
            gt_labels=labels,
            gt_num_lidar_pts=num_pts,
            gt_instance_tokens=inst_tokens,
            gt_fut_traj=agent_fut,
            gt_fut_mask=agent_mask,
            map_vectors=map_vectors,
            map_labels=map_labels,
            gt_fut_yaw=agent_yaw,
            gt_categories=categories,
        )

    def _can_bus(self, sample: dict, scene_name: str) -> np.ndarray:
        """VAD's vector from the scene's pose messages at the sample's time and the LIDAR_TOP ego pose."""
        messages = self.can_bus.get(scene_name)
        if messages is None:
            self._no_can_bus[scene_name] = None
        pose = self.nusc.get("ego_pose", self._sample_data(sample, LIDAR)["ego_pose_token"])
        return vad_can_bus(messages, int(sample["timestamp"]), pose["translation"], pose["rotation"])

    def _cameras(self, sample: dict, global_to_lidar: np.ndarray):
        paths, sizes = [], np.zeros((len(CAMERAS), 2), np.int64)
        intrinsics = np.zeros((len(CAMERAS), 3, 3))
        cam_to_lidar = np.zeros((len(CAMERAS), 4, 4))
        for i, channel in enumerate(CAMERAS):
            sd = self._sample_data(sample, channel)
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
            # camera -> ego (camera time) -> global -> ego (lidar time) -> lidar: mmdet3d's sensor2lidar.
            cam_to_lidar[i] = (
                global_to_lidar
                @ pose_matrix(pose["translation"], pose["rotation"])
                @ pose_matrix(cs["translation"], cs["rotation"])
            )
            intrinsics[i] = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
            sizes[i] = _image_size(self.dataroot / sd["filename"], sd, sample["token"], channel)
            paths.append(sd["filename"])
        return tuple(paths), sizes, intrinsics, cam_to_lidar

    def _ego_motion(self, sample: dict, global_to_lidar: np.ndarray):
        """Future/past lidar-origin positions in the current lidar frame, their masks, and the velocity."""

        def position(token: str) -> np.ndarray:
            return apply(global_to_lidar, self._lidar_to_global(token)[:3, 3])[:2]

        _, _, t0 = self.lidar_pose(sample["token"])
        fut = np.zeros((FUT_STEPS, 2))
        fut_mask = np.zeros(FUT_STEPS)
        last, token, t_next = np.zeros(2), sample["next"], None
        for i in range(FUT_STEPS):
            if token:
                last = position(token)
                fut_mask[i] = 1.0
                if i == 0:
                    t_next = self.lidar_pose(token)[2]
                token = self.nusc.get("sample", token)["next"]
            fut[i] = last

        # Rows 0..HIS_STEPS-1 are -1.0 s, -0.5 s; row HIS_STEPS is the current position (0, 0).
        his = np.zeros((HIS_STEPS + 1, 2))
        his_mask = np.zeros(HIS_STEPS)
        earliest, token, t_prev = HIS_STEPS, sample["prev"], None
        for i in range(HIS_STEPS - 1, -1, -1):
            if not token:
                break
            his[i] = position(token)
            his_mask[i] = 1.0
            earliest = i
            if i == HIS_STEPS - 1:
                t_prev = self.lidar_pose(token)[2]
            token = self.nusc.get("sample", token)["prev"]
        # Before the scene's start VAD extrapolates backwards with the earliest known step's displacement.
        if earliest > 0:
            if earliest < HIS_STEPS:
                step = his[earliest + 1] - his[earliest]
            else:
                step = fut[0] if fut_mask[0] else np.zeros(2)
            for i in range(earliest - 1, -1, -1):
                his[i] = his[i + 1] - step
        his = his[:HIS_STEPS]

        if t_prev is not None and t0 > t_prev:
            velocity = -his[HIS_STEPS - 1] / ((t0 - t_prev) * 1e-6)
        elif t_next is not None and t_next > t0:
            velocity = fut[0] / ((t_next - t0) * 1e-6)
        else:
            velocity = np.zeros(2)
        return fut, fut_mask, his, his_mask, velocity

    def _boxes(self, sample: dict, global_to_lidar: np.ndarray):
        nusc = self.nusc
        lidar_sd = sample["data"][LIDAR]
        _, boxes, _ = nusc.get_sample_data(lidar_sd)  # boxes in the lidar frame
        rows, labels, num_pts, tokens, futs, masks, yaws, categories = [], [], [], [], [], [], [], []
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            name = _detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] <= 0:
                continue
            velocity = nusc.box_velocity(ann["token"])
            velocity = np.nan_to_num(velocity, nan=0.0)
            velocity[2] = 0.0
            v_lidar = rotate(global_to_lidar, velocity)[:2]
            yaw = box.orientation.yaw_pitch_roll[0]
            rows.append([*box.center, *box.wlh, yaw, *v_lidar])
            labels.append(DETECTION_CLASSES.index(name))
            num_pts.append(int(ann["num_lidar_pts"]))
            tokens.append(ann["instance_token"])
            fut, mask = self._agent_future(ann, box.center[:2], global_to_lidar)
            futs.append(fut)
            masks.append(mask)
            yaws.append(self._agent_future_yaw(ann, box, sample))
            categories.append(self._category_index.get(ann["category_name"], -1))
        n = len(rows)
        return (
            np.asarray(rows, dtype=np.float64).reshape(n, 9),
            np.asarray(labels, dtype=np.int64),
            np.asarray(num_pts, dtype=np.int64),
            tuple(tokens),
            np.asarray(futs, dtype=np.float64).reshape(n, FUT_STEPS, 2),
            np.asarray(masks, dtype=np.float64).reshape(n, FUT_STEPS),
            np.asarray(yaws, dtype=np.float64).reshape(n, FUT_STEPS),
            np.asarray(categories, dtype=np.int64),
        )

    def _agent_future(self, ann: dict, centre: np.ndarray, global_to_lidar: np.ndarray):
        """Positions along the instance's `next` chain relative to its current centre, in the current lidar frame."""
        fut = np.zeros((FUT_STEPS, 2))
        mask = np.zeros(FUT_STEPS)
        last, token = np.zeros(2), ann["next"]
        for i in range(FUT_STEPS):
            if token:
                nxt = self.nusc.get("sample_annotation", token)
                last = apply(global_to_lidar, nxt["translation"])[:2] - centre
                mask[i] = 1.0
                token = nxt["next"]
            fut[i] = last
        return fut, mask

    def _agent_future_yaw(self, ann: dict, box, sample: dict) -> np.ndarray:
        """(6,) heading change from the current heading at each future step, held past the agent's end.

        As VAD's converter: each next annotation's box is moved into the current lidar frame with the
        devkit's Box operations (the LIDAR_TOP keyframe's ego pose and calibration), its yaw taken with
        `quaternion_yaw_vad`, and the per-step differences summed.
        """
        from nuscenes.utils.data_classes import Box
        from pyquaternion import Quaternion

        sd = self._sample_data(sample, LIDAR)
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        out = np.zeros(FUT_STEPS)
        total, yaw, token = 0.0, quaternion_yaw_vad(box.orientation), ann["next"]
        for i in range(FUT_STEPS):
            if token:
                nxt = self.nusc.get("sample_annotation", token)
                b = Box(nxt["translation"], nxt["size"], Quaternion(nxt["rotation"]))
                b.translate(-np.array(pose["translation"]))
                b.rotate(Quaternion(pose["rotation"]).inverse)
                b.translate(-np.array(cs["translation"]))
                b.rotate(Quaternion(cs["rotation"]).inverse)
                yaw_next = quaternion_yaw_vad(b.orientation)
                total += yaw_next - yaw
                yaw, token = yaw_next, nxt["next"]
            out[i] = total
        return out


def quaternion_yaw_vad(q) -> float:
    """The yaw VAD's converter takes of a pyquaternion (its `quart_to_rpy`, the ZYX Euler yaw)."""
    w, x, y, z = q.elements
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (z * z + y * y))


def command_from_future(fut: np.ndarray, mask: np.ndarray) -> int:
    """0 turn right, 1 turn left, 2 straight, from the position at 3 s (or the last valid one)."""
    valid = np.flatnonzero(np.asarray(mask) > 0)
    x = float(fut[valid[-1], 0]) if len(valid) else 0.0
    if x >= TURN_THRESHOLD:
        return 0
    if x <= -TURN_THRESHOLD:
        return 1
    return 2


def _detection_name(category_name: str) -> str | None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    name = category_to_detection_name(category_name)
    return name if name in DETECTION_CLASSES else None


def _image_size(path: Path, sd: dict, sample_token: str, channel: str) -> tuple[int, int]:
    """(width, height) from the image header; a missing or unreadable file is a one-line error."""
    try:
        with Image.open(path) as im:
            size = im.size
    except FileNotFoundError as err:
        raise MissingPathError(f"camera image not found: {path} (sample {sample_token}, {channel})") from err
    except UnidentifiedImageError as err:
        raise DataError(
            f"camera image is not a readable image: {path} (unknown format; sample {sample_token}, {channel})"
        ) from err
    except OSError as err:
        raise DataError(f"camera image is not a readable image: {path} ({err})") from err
    expected = (int(sd.get("width") or 0), int(sd.get("height") or 0))
    if all(expected) and size != expected:
        raise DataError(
            f"camera image {path} is {size[0]}x{size[1]}, but sample_data says {expected[0]}x{expected[1]}"
        )
    return size
