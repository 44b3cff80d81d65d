"""The sample index: one Parquet row per nuScenes keyframe, in VAD's conventions.

`prepare` walks the devkit once and writes this file; every later stage reads it instead of the devkit.
This module is the contract between them: the column set, the array shapes and the frames.

Frames and conventions (VAD's):
- "lidar frame" is the LIDAR_TOP sensor frame of the sample: x to the right, y forward, z up.
- Boxes are `(x, y, z, w, l, h, yaw, vx, vy)`: geometric centre, nuScenes width/length/height, yaw the
  heading in the lidar frame counter-clockwise from +x, velocity in m/s in the lidar frame.
- Trajectories are positions (not per-step offsets) at 0.5 s steps: the ego's relative to the ego's current
  lidar origin, each agent's relative to that agent's current centre, both in the sample's lidar frame.
  `gt_fut_yaw` is likewise each agent's heading at each future step minus its current heading (VAD's
  per-step yaw changes summed; headings from VAD's quaternion-to-yaw formula), held past the agent's end.
- `gt_categories`: each box's position in the dataset's nuScenes category table (VAD's agent `type`,
  which its collision metric keys on: human 2..8, vehicle 14..23 in the 32-category table).
- `command`: 0 = turn right, 1 = turn left, 2 = go straight (from the ego position at 3 s: x >= 2 right,
  x <= -2 left).
- Map vectors: `(M, 20, 2)` points in the lidar frame, labels in `MAP_CLASSES` order.
- `can_bus`: VAD's 18-value vector as its dataset gives it to the model, before the model's frame-to-frame
  delta (see `netroller.data.can_bus`): ego translation (3) in the global frame, the ego rotation's real part
  w four times (VAD's quirk, kept), the devkit's accel, rotation_rate and vel (9, zeros for a scene without
  CAN-bus data), the ego yaw in radians and in degrees, both in [0, 360) degrees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netroller.errors import DataError, MissingPathError
from netroller.storage.atomic import atomic_path

# 2: the `can_bus` column and the CAN-bus fields of the metadata; 3: `gt_fut_yaw` and `gt_categories`.
INDEX_FORMAT_VERSION = 3
METADATA_KEY = b"netroller.index"

# VAD's camera order.
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
# nuScenes detection classes in VAD's order; `gt_labels` index into this.
DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
MAP_CLASSES = ("divider", "ped_crossing", "boundary")
# The category-table index (nuScenes v1.0, 32 categories) of each detection class's most common category,
# in DETECTION_CLASSES order: the `gt_categories` of a record built without them.
USUAL_CATEGORY = (17, 23, 18, 16, 22, 9, 21, 14, 2, 12)
FUT_STEPS = 6  # 3 s at 2 Hz
HIS_STEPS = 2
MAP_POINTS = 20
COMMANDS = ("turn_right", "turn_left", "straight")
SPLITS = ("train", "val", "test")
CAN_BUS_SIZE = 18


@dataclass(frozen=True, kw_only=True)
class SampleRecord:
    """One keyframe sample, everything later stages need from the devkit."""

    sample_token: str
    scene_token: str
    scene_name: str
    split: str  # "train" | "val" | "test" (devkit's mini_train maps to "train", mini_val to "val")
    frame_index: int  # 0-based position of this keyframe in its scene
    timestamp: int  # microseconds
    map_name: str
    cam_paths: tuple[str, ...]  # 6, relative to the dataroot, in CAMERAS order
    cam_image_sizes: np.ndarray  # (6, 2) int64: width, height
    cam_intrinsics: np.ndarray  # (6, 3, 3)
    cam_to_lidar: np.ndarray  # (6, 4, 4) camera sensor frame -> lidar frame
    lidar_to_ego: np.ndarray  # (4, 4)
    ego_to_global: np.ndarray  # (4, 4)
    can_bus: np.ndarray = field(default_factory=lambda: np.zeros(CAN_BUS_SIZE))  # (18,) float64, VAD's
    ego_velocity: np.ndarray  # (2,) m/s in the lidar frame
    ego_his_traj: np.ndarray  # (2, 2) past positions at -1.0 s, -0.5 s, lidar frame
    ego_his_mask: np.ndarray  # (2,)
    ego_fut_traj: np.ndarray  # (6, 2) future positions at 0.5 .. 3.0 s, lidar frame
    ego_fut_mask: np.ndarray  # (6,) 1 where that future keyframe exists
    command: int
    gt_boxes: np.ndarray  # (N, 9) x, y, z, w, l, h, yaw, vx, vy
    gt_labels: np.ndarray  # (N,) int64 into DETECTION_CLASSES
    gt_num_lidar_pts: np.ndarray  # (N,) int64
    gt_instance_tokens: tuple[str, ...]  # N
    gt_fut_traj: np.ndarray  # (N, 6, 2) positions relative to each agent's current centre
    gt_fut_mask: np.ndarray  # (N, 6)
    map_vectors: np.ndarray  # (M, 20, 2)
    map_labels: np.ndarray  # (M,) int64 into MAP_CLASSES
    # Defaults for records built by hand (tests, benches): headings kept, each label's usual category.
    gt_fut_yaw: np.ndarray | None = None  # (N, 6) heading change from the current heading
    gt_categories: np.ndarray | None = None  # (N,) int64 position in the nuScenes category table

    def __post_init__(self) -> None:
        n = int(np.asarray(self.gt_boxes).reshape(-1, 9).shape[0])
        if self.gt_fut_yaw is None:
            object.__setattr__(self, "gt_fut_yaw", np.zeros((n, FUT_STEPS), np.float32))
        if self.gt_categories is None:
            labels = np.asarray(self.gt_labels, dtype=np.int64).reshape(-1)
            object.__setattr__(self, "gt_categories", np.asarray(USUAL_CATEGORY, np.int64)[labels])

    def lidar_to_image(self) -> np.ndarray:
        """(6, 4, 4) projection from the lidar frame to pixel coordinates (homogeneous), per camera."""
        out = np.zeros((len(CAMERAS), 4, 4), dtype=np.float64)
        for i in range(len(CAMERAS)):
            viewpad = np.eye(4)
            viewpad[:3, :3] = self.cam_intrinsics[i]
            out[i] = viewpad @ np.linalg.inv(self.cam_to_lidar[i])
        return out

    @property
    def num_boxes(self) -> int:
        return int(self.gt_boxes.shape[0])


def bare_record(
    *,
    sample_token: str,
    scene_token: str,
    frame_index: int,
    split: str = "train",
    cam_paths: tuple[str, ...] | None = None,
    image_size: tuple[int, int] = (1600, 900),
    **fields,
) -> SampleRecord:
    """A record with identity calibrations and no annotations (an images-only index for tests and benches).

    Camera paths default to samples/<CAM>/<token>.jpg; any other field can be given by name.
    """
    base = dict(
        sample_token=sample_token,
        scene_token=scene_token,
        scene_name=f"scene-{scene_token}",
        split=split,
        frame_index=frame_index,
        timestamp=1_000_000 + 500_000 * frame_index,
        map_name="singapore-onenorth",
        cam_paths=cam_paths or tuple(f"samples/{cam}/{sample_token}.jpg" for cam in CAMERAS),
        cam_image_sizes=np.tile([list(image_size)], (len(CAMERAS), 1)),
        cam_intrinsics=np.tile(np.eye(3), (len(CAMERAS), 1, 1)),
        cam_to_lidar=np.tile(np.eye(4), (len(CAMERAS), 1, 1)),
        lidar_to_ego=np.eye(4),
        ego_to_global=np.eye(4),
        ego_velocity=np.zeros(2),
        ego_his_traj=np.zeros((HIS_STEPS, 2)),
        ego_his_mask=np.ones(HIS_STEPS),
        ego_fut_traj=np.zeros((FUT_STEPS, 2)),
        ego_fut_mask=np.ones(FUT_STEPS),
        command=2,
        gt_boxes=np.zeros((0, 9)),
        gt_labels=np.zeros((0,), dtype=np.int64),
        gt_num_lidar_pts=np.zeros((0,), dtype=np.int64),
        gt_instance_tokens=(),
        gt_fut_traj=np.zeros((0, FUT_STEPS, 2)),
        gt_fut_mask=np.zeros((0, FUT_STEPS)),
        map_vectors=np.zeros((0, MAP_POINTS, 2)),
        map_labels=np.zeros((0,), dtype=np.int64),
    )
    base.update(fields)
    return SampleRecord(**base)


# Array fields: dtype and trailing shape. A leading dimension of None is per-sample (N boxes, M vectors);
# its length is recovered from the flat list and the trailing shape.
_ARRAY_FIELDS: dict[str, tuple[np.dtype, tuple[int | None, ...]]] = {
    "cam_image_sizes": (np.dtype(np.int64), (6, 2)),
    "cam_intrinsics": (np.dtype(np.float64), (6, 3, 3)),
    "cam_to_lidar": (np.dtype(np.float64), (6, 4, 4)),
    "lidar_to_ego": (np.dtype(np.float64), (4, 4)),
    "ego_to_global": (np.dtype(np.float64), (4, 4)),
    "can_bus": (np.dtype(np.float64), (CAN_BUS_SIZE,)),
    "ego_velocity": (np.dtype(np.float32), (2,)),
    "ego_his_traj": (np.dtype(np.float32), (HIS_STEPS, 2)),
    "ego_his_mask": (np.dtype(np.float32), (HIS_STEPS,)),
    "ego_fut_traj": (np.dtype(np.float32), (FUT_STEPS, 2)),
    "ego_fut_mask": (np.dtype(np.float32), (FUT_STEPS,)),
    "gt_boxes": (np.dtype(np.float32), (None, 9)),
    "gt_labels": (np.dtype(np.int64), (None,)),
    "gt_num_lidar_pts": (np.dtype(np.int64), (None,)),
    "gt_fut_traj": (np.dtype(np.float32), (None, FUT_STEPS, 2)),
    "gt_fut_mask": (np.dtype(np.float32), (None, FUT_STEPS)),
    "map_vectors": (np.dtype(np.float32), (None, MAP_POINTS, 2)),
    "map_labels": (np.dtype(np.int64), (None,)),
    "gt_fut_yaw": (np.dtype(np.float32), (None, FUT_STEPS)),
    "gt_categories": (np.dtype(np.int64), (None,)),
}
_STR_LIST_FIELDS = ("cam_paths", "gt_instance_tokens")
_SCALAR_FIELDS: dict[str, pa.DataType] = {
    "sample_token": pa.string(),
    "scene_token": pa.string(),
    "scene_name": pa.string(),
    "split": pa.string(),
    "frame_index": pa.int64(),
    "timestamp": pa.int64(),
    "map_name": pa.string(),
    "command": pa.int64(),
}
COLUMNS = tuple(f.name for f in fields(SampleRecord))


def _arrow_type(name: str) -> pa.DataType:
    if name in _SCALAR_FIELDS:
        return _SCALAR_FIELDS[name]
    if name in _STR_LIST_FIELDS:
        return pa.list_(pa.string())
    dtype, _ = _ARRAY_FIELDS[name]
    return pa.list_(pa.from_numpy_dtype(dtype))


SCHEMA = pa.schema([pa.field(name, _arrow_type(name)) for name in COLUMNS])


@dataclass(frozen=True, kw_only=True)
class IndexMeta:
    """What the index was built from; stored in the Parquet schema metadata."""

    dataroot: str
    version: str
    can_bus_dir: str = ""
    """The CAN-bus folder `prepare` read ("" when there was none)."""
    scenes_without_can_bus: tuple[str, ...] = ()
    """Names of the scenes whose samples got zeros for the devkit part of `can_bus`."""
    format_version: int = INDEX_FORMAT_VERSION


def _check_array(record: SampleRecord, name: str) -> np.ndarray:
    dtype, trailing = _ARRAY_FIELDS[name]
    arr = np.asarray(getattr(record, name))
    fixed = tuple(d for d in trailing if d is not None)
    ok = arr.ndim == len(trailing) and arr.shape[len(trailing) - len(fixed) :] == fixed
    if not ok:
        raise DataError(
            f"sample {record.sample_token}: field {name} has shape {arr.shape}, expected {trailing}"
        )
    return arr.astype(dtype, copy=False).reshape(-1)


def write_index(records: Iterable[SampleRecord], path: str | Path, meta: IndexMeta) -> Path:
    """Write the index atomically (a reader sees the old file or the whole new one)."""
    records = list(records)
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    for rec in records:
        for name in COLUMNS:
            if name in _ARRAY_FIELDS:
                columns[name].append(_check_array(rec, name))
            elif name in _STR_LIST_FIELDS:
                columns[name].append(list(getattr(rec, name)))
            else:
                columns[name].append(getattr(rec, name))
    arrays = [pa.array(columns[name], type=SCHEMA.field(name).type) for name in COLUMNS]
    meta_json = json.dumps(
        {
            "dataroot": meta.dataroot,
            "version": meta.version,
            "can_bus_dir": meta.can_bus_dir,
            "scenes_without_can_bus": list(meta.scenes_without_can_bus),
            "format_version": meta.format_version,
        }
    )
    table = pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata({METADATA_KEY: meta_json.encode()}))
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


class Index:
    """An index loaded in memory: records in file order, lookup by token, split selection."""

    def __init__(self, records: Sequence[SampleRecord], meta: IndexMeta, path: Path):
        self.records = list(records)
        self.meta = meta
        self.path = path
        self._by_token = {r.sample_token: i for i, r in enumerate(self.records)}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, token: str) -> SampleRecord:
        return self.records[self._by_token[token]]

    def __contains__(self, token: str) -> bool:
        return token in self._by_token

    def position(self, token: str) -> int:
        return self._by_token[token]

    def split(self, name: str) -> list[SampleRecord]:
        """Records of one split ("train", "val", "test"), or all for "all"."""
        if name == "all":
            return list(self.records)
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)} or 'all'")
        return [r for r in self.records if r.split == name]

    def scene_neighbour(self, token: str, offset: int) -> SampleRecord | None:
        """The keyframe `offset` positions away in the same scene, or None past the scene's ends."""
        rec = self[token]
        j = self._by_token[token] + offset
        if 0 <= j < len(self.records):
            other = self.records[j]
            if other.scene_token == rec.scene_token and other.frame_index == rec.frame_index + offset:
                return other
        return None

    def dataroot(self, override: str | Path | None = None) -> Path:
        return Path(override) if override is not None else Path(self.meta.dataroot)


def read_index(path: str | Path) -> Index:
    """Load an index written by `write_index`; refuses files of another format or missing columns."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"index file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet index ({err})") from err
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(f"{path}: not a netroller index (no '{METADATA_KEY.decode()}' metadata)")
    meta_d = json.loads(raw)
    if meta_d.get("format_version") != INDEX_FORMAT_VERSION:
        raise DataError(
            f"{path}: index format version {meta_d.get('format_version')} is not supported "
            f"(this netroller reads version {INDEX_FORMAT_VERSION}); re-run `netroller prepare`"
        )
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: index lacks columns {', '.join(missing)}")
    meta = IndexMeta(
        dataroot=meta_d["dataroot"],
        version=meta_d["version"],
        can_bus_dir=meta_d["can_bus_dir"],
        scenes_without_can_bus=tuple(meta_d["scenes_without_can_bus"]),
    )
    cols = {name: table.column(name).to_pylist() for name in COLUMNS}
    records = []
    for i in range(table.num_rows):
        kw = {}
        for name in COLUMNS:
            value = cols[name][i]
            if name in _ARRAY_FIELDS:
                dtype, trailing = _ARRAY_FIELDS[name]
                fixed = tuple(d for d in trailing if d is not None)
                arr = np.asarray(value, dtype=dtype)
                kw[name] = arr.reshape((-1, *fixed) if None in trailing else fixed)
            elif name in _STR_LIST_FIELDS:
                kw[name] = tuple(value)
            else:
                kw[name] = value
        records.append(SampleRecord(**kw))
    return Index(records, meta, path)


def file_hash(path: str | Path, *, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (the index hash in a cache key)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
