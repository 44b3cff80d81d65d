"""Opening nuScenes through the devkit, with errors that name the path.

The devkit only `assert`s (or raises a bare `FileNotFoundError` / `JSONDecodeError` without the file name)
when a dataroot is incomplete. These wrappers check the layout first and turn each problem into a
`MissingPathError` or `DataError` that says which file or folder is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from netroller.errors import ConfigError, DataError, MissingPathError

VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")
# The 13 tables `NuScenes` loads, in its order.
TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)
# Devkit split names per version, and what they are called in the index.
_VERSION_SPLITS = {
    "v1.0-mini": {"mini_train": "train", "mini_val": "val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-test": {"test": "test"},
}


def check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ConfigError(
            f"version: {version!r} is not a nuScenes version; expected one of {', '.join(VERSIONS)}"
        )


def check_layout(dataroot: Path, version: str) -> None:
    """Check the dataroot, the version folder, the table files and the map masks the `map` table names."""
    check_version(version)
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise MissingPathError(f"nuScenes dataroot not found: {dataroot}")
    table_root = dataroot / version
    if not table_root.is_dir():
        present = sorted(p.name for p in dataroot.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        hint = f" (found: {', '.join(present)})" if present else ""
        raise MissingPathError(f"nuScenes version folder not found: {table_root}{hint}")
    for table in TABLES:
        path = table_root / f"{table}.json"
        if not path.is_file():
            raise MissingPathError(f"nuScenes table not found: {path}")
    # The devkit opens every map mask named in map.json at load time (and only asserts when one is missing).
    map_path = table_root / "map.json"
    for rec in _load_json(map_path):
        try:
            mask = dataroot / rec["filename"]
        except (KeyError, TypeError) as err:
            raise DataError(f"{map_path}: a map record lacks 'filename'") from err
        if not mask.is_file():
            raise MissingPathError(f"map mask named in {map_path} not found: {mask}")


def _load_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def open_nuscenes(dataroot: Path, version: str, *, verbose: bool = False):
    """`NuScenes(version, dataroot)` after `check_layout`; devkit failures become `DataError`s."""
    from nuscenes import NuScenes

    check_layout(dataroot, version)
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    except json.JSONDecodeError as err:
        # The devkit does not say which table; find it (only on this error path, so the cost is fine).
        for table in TABLES:
            _load_json(Path(dataroot) / version / f"{table}.json")
        raise DataError(f"{Path(dataroot) / version}: a table is not valid JSON ({err})") from err
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as err:
        raise DataError(
            f"nuScenes {version} under {dataroot} could not be loaded by the devkit: "
            f"{type(err).__name__}: {err}"
        ) from err


def map_expansion_path(dataroot: Path, map_name: str) -> Path:
    return Path(dataroot) / "maps" / "expansion" / f"{map_name}.json"


def open_map(dataroot: Path, map_name: str):
    """`NuScenesMap(dataroot, map_name)` with a clear error for an unknown name or a missing/broken file."""
    from nuscenes.map_expansion.map_api import NuScenesMap, locations

    if map_name not in locations:
        raise DataError(f"map name {map_name!r} is not a devkit map location (one of {', '.join(locations)})")
    path = map_expansion_path(dataroot, map_name)
    if not path.is_file():
        raise MissingPathError(f"map expansion file not found: {path}")
    try:
        return NuScenesMap(dataroot=str(dataroot), map_name=map_name)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    except Exception as err:  # the devkit raises bare Exception for old map versions
        raise DataError(f"{path}: the devkit cannot load this map ({type(err).__name__}: {err})") from err


def scene_splits(version: str) -> dict[str, str]:
    """Scene name -> "train" | "val" | "test" for `version`, from `create_splits_scenes()`."""
    from nuscenes.utils.splits import create_splits_scenes

    check_version(version)
    devkit = create_splits_scenes()
    out: dict[str, str] = {}
    for devkit_name, split in _VERSION_SPLITS[version].items():
        for scene_name in devkit[devkit_name]:
            out[scene_name] = split
    return out


def split_names(version: str) -> tuple[str, ...]:
    """The devkit split names that `scene_splits(version)` draws on (for error messages)."""
    check_version(version)
    return tuple(_VERSION_SPLITS[version])
