"""Assembles the 13 nuScenes v1.0 tables, with the real tables' field names and record layout.

Tables are built in memory while the generator walks the keyframes, then written as JSON. Linked lists
(prev/next of samples, sample_data per sensor, annotations per instance) are closed by `finish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netroller.data.nusc import TABLES
from netroller.data.synth.catalog import ATTRIBUTES, CATEGORIES, VISIBILITY
from netroller.data.synth.sensors import CAMERAS, LIDAR, LIDAR_ROTATION, LIDAR_TRANSLATION, Camera
from netroller.data.synth.tokens import TokenFactory

TABLE_NAMES = TABLES  # the 13 tables the devkit loads


@dataclass
class AnnotationIn:
    """One object at one keyframe, as the generator measured it."""

    instance_key: int  # unique per scene
    category: str
    attribute: str | None
    translation: list[float]
    size: list[float]
    rotation: list[float]
    num_lidar_pts: int
    visibility_token: str


@dataclass
class TableBuilder:
    seed: int
    tables: dict[str, list] = field(default_factory=lambda: {name: [] for name in TABLE_NAMES})

    def __post_init__(self) -> None:
        self._tok = {name: TokenFactory(self.seed, name) for name in TABLE_NAMES}
        self.category_token = {}
        for index, name, desc in CATEGORIES:
            t = self._tok["category"]()
            self.category_token[name] = t
            self.tables["category"].append({"token": t, "name": name, "description": desc, "index": index})
        self.attribute_token = {}
        for name, desc in ATTRIBUTES:
            t = self._tok["attribute"]()
            self.attribute_token[name] = t
            self.tables["attribute"].append({"token": t, "name": name, "description": desc})
        for token, level, desc in VISIBILITY:
            self.tables["visibility"].append({"description": desc, "token": token, "level": level})
        self.sensor_token = {}
        for ch in CAMERAS + (LIDAR,):
            t = self._tok["sensor"]()
            self.sensor_token[ch] = t
            self.tables["sensor"].append(
                {"token": t, "channel": ch, "modality": "lidar" if ch == LIDAR else "camera"}
            )
        self._instances: dict[tuple[str, int], dict] = {}
        self._last_ann: dict[tuple[str, int], dict] = {}
        self._map_logs: dict[str, list[str]] = {}

    # ---------------------------------------------------------------------------------------- scenes

    def add_scene(
        self,
        *,
        name: str,
        description: str,
        location: str,
        logfile: str,
        date: str,
        vehicle: str,
        cameras: list[Camera],
    ) -> dict:
        """Creates the log, scene and calibrated_sensor records; returns a per-scene context."""
        log_token = self._tok["log"]()
        self.tables["log"].append(
            {
                "token": log_token,
                "logfile": logfile,
                "vehicle": vehicle,
                "date_captured": date,
                "location": location,
            }
        )
        self._map_logs.setdefault(location, []).append(log_token)
        scene = {
            "token": self._tok["scene"](),
            "log_token": log_token,
            "nbr_samples": 0,
            "first_sample_token": "",
            "last_sample_token": "",
            "name": name,
            "description": description,
        }
        self.tables["scene"].append(scene)
        calib = {}
        for cam in cameras:
            t = self._tok["calibrated_sensor"]()
            calib[cam.channel] = t
            self.tables["calibrated_sensor"].append(
                {
                    "token": t,
                    "sensor_token": self.sensor_token[cam.channel],
                    "translation": list(cam.translation),
                    "rotation": list(cam.rotation),
                    "camera_intrinsic": cam.intrinsic.tolist(),
                }
            )
        t = self._tok["calibrated_sensor"]()
        calib[LIDAR] = t
        self.tables["calibrated_sensor"].append(
            {
                "token": t,
                "sensor_token": self.sensor_token[LIDAR],
                "translation": list(LIDAR_TRANSLATION),
                "rotation": list(LIDAR_ROTATION),
                "camera_intrinsic": [],
            }
        )
        return {"scene": scene, "calib": calib, "prev_sample": None, "prev_sd": {}}

    def add_keyframe(
        self,
        ctx: dict,
        *,
        timestamp: int,
        ego_translation: list[float],
        ego_rotation: list[float],
        files: dict[str, str],
        image_size: tuple[int, int],
        annotations: list[AnnotationIn],
    ) -> dict:
        """Creates the sample, its 7 sample_data (each with its ego_pose) and its annotations."""
        scene = ctx["scene"]
        sample = {
            "token": self._tok["sample"](),
            "timestamp": timestamp,
            "prev": "",
            "next": "",
            "scene_token": scene["token"],
        }
        prev = ctx["prev_sample"]
        if prev is not None:
            prev["next"] = sample["token"]
            sample["prev"] = prev["token"]
        else:
            scene["first_sample_token"] = sample["token"]
        scene["last_sample_token"] = sample["token"]
        scene["nbr_samples"] += 1
        ctx["prev_sample"] = sample
        self.tables["sample"].append(sample)

        for ch in CAMERAS + (LIDAR,):
            pose = {
                "token": self._tok["ego_pose"](),
                "timestamp": timestamp,
                "rotation": list(ego_rotation),
                "translation": list(ego_translation),
            }
            self.tables["ego_pose"].append(pose)
            is_cam = ch != LIDAR
            sd = {
                "token": self._tok["sample_data"](),
                "sample_token": sample["token"],
                "ego_pose_token": pose["token"],
                "calibrated_sensor_token": ctx["calib"][ch],
                "timestamp": timestamp,
                "fileformat": "jpg" if is_cam else "pcd",
                "is_key_frame": True,
                "height": image_size[1] if is_cam else 0,
                "width": image_size[0] if is_cam else 0,
                "filename": files[ch],
                "prev": "",
                "next": "",
            }
            p = ctx["prev_sd"].get(ch)
            if p is not None:
                p["next"] = sd["token"]
                sd["prev"] = p["token"]
            ctx["prev_sd"][ch] = sd
            self.tables["sample_data"].append(sd)

        for a in annotations:
            key = (scene["token"], a.instance_key)
            inst = self._instances.get(key)
            ann = {
                "token": self._tok["sample_annotation"](),
                "sample_token": sample["token"],
                "instance_token": "",
                "visibility_token": a.visibility_token,
                "attribute_tokens": [self.attribute_token[a.attribute]] if a.attribute else [],
                "translation": a.translation,
                "size": a.size,
                "rotation": a.rotation,
                "prev": "",
                "next": "",
                "num_lidar_pts": int(a.num_lidar_pts),
                "num_radar_pts": 0,
            }
            if inst is None:
                inst = {
                    "token": self._tok["instance"](),
                    "category_token": self.category_token[a.category],
                    "nbr_annotations": 0,
                    "first_annotation_token": ann["token"],
                    "last_annotation_token": "",
                }
                self._instances[key] = inst
                self.tables["instance"].append(inst)
            else:
                last = self._last_ann[key]
                last["next"] = ann["token"]
                ann["prev"] = last["token"]
            ann["instance_token"] = inst["token"]
            inst["nbr_annotations"] += 1
            inst["last_annotation_token"] = ann["token"]
            self._last_ann[key] = ann
            self.tables["sample_annotation"].append(ann)
        return sample

    def add_map(self, location: str) -> dict:
        """The map record of a location (its PNG mask is named after its token, as in nuScenes)."""
        t = self._tok["map"]()
        record = {
            "category": "semantic_prior",
            "token": t,
            "filename": f"maps/{t}.png",
            "log_tokens": list(self._map_logs.get(location, [])),
        }
        self.tables["map"].append(record)
        return record
