"""3D detection metrics through nuscenes-devkit's `DetectionEval`, in VAD's evaluation range.

Predictions (lidar frame, index conventions) become a nuScenes submission in the global frame: the box
centre goes through the record's `lidar_to_ego` then `ego_to_global`, the heading and the velocity are
rotated by the same rotations, `detection_name` comes from the label and `attribute_name` is chosen from the
speed as mmdet3d's nuScenes formatter (and so VAD) does.

The devkit's own `DetectionEval.__init__` evaluates every sample of a predefined split and filters boxes
by a circular per-class distance. We subclass it and only replace the loading: GT of the evaluated samples
(`load_gt_of_sample_tokens`, after checking that each belongs to the devkit split `eval_set`), the official
prediction loader restricted to those samples, then VAD's rectangle: a box is kept when its centre, in the
sample's lidar frame, has |x| <= 15 m and |y| <= 30 m, for GT and predictions alike. The devkit's
`filter_eval_boxes` still runs afterwards for its other rules (GT boxes without lidar or radar points,
bicycles in bike racks) with an unbounded distance, so the rectangle is the only range rule. Matching,
AP, TP errors and NDS are the devkit's `evaluate()` unchanged.

Classes without any GT box in the evaluated samples (after filtering) are left out of mAP and NDS,
because the devkit would score their AP 0 whatever the model does; on nuScenes val every class is
present, so there this equals the official figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.loaders import (
    add_center_dist,
    filter_eval_boxes,
    load_gt_of_sample_tokens,
    load_prediction,
)
from nuscenes.eval.detection.data_classes import DetectionBox, DetectionConfig
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from netroller.data.index import DETECTION_CLASSES, SampleRecord
from netroller.errors import DataError

# VAD's evaluation rectangle in the lidar frame: x lateral, y longitudinal.
RANGE_X = 15.0
RANGE_Y = 30.0

# mmdet3d's NuScenesDataset.DefaultAttribute, which VAD's formatter uses.
_DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "trailer": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "barrier": "",
    "traffic_cone": "",
}
_VEHICLES = frozenset({"car", "construction_vehicle", "bus", "truck", "trailer"})
_CYCLES = frozenset({"bicycle", "motorcycle"})


class BoxPrediction(Protocol):
    """The fields of a decoded prediction that detection reads (`VADPrediction` has them)."""

    sample_token: str
    boxes: np.ndarray  # (K, 9) x, y, z, w, l, h, yaw, vx, vy in the lidar frame
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) into DETECTION_CLASSES


def attribute_for(name: str, velocity: np.ndarray) -> str:
    """The attribute mmdet3d's formatter gives a predicted box of class `name` moving at `velocity`."""
    if float(np.hypot(velocity[0], velocity[1])) > 0.2:
        if name in _VEHICLES:
            return "vehicle.moving"
        if name in _CYCLES:
            return "cycle.with_rider"
        return _DEFAULT_ATTRIBUTE[name]
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return _DEFAULT_ATTRIBUTE[name]


def box_to_global(box: np.ndarray, lidar_to_global: np.ndarray) -> dict[str, list[float]]:
    """Translation, size, rotation `[w, x, y, z]` and velocity of one lidar-frame box in the global frame."""
    x, y, z, w, length, h, yaw, vx, vy = (float(v) for v in box)
    rot = lidar_to_global[:3, :3]
    centre = rot @ np.array([x, y, z]) + lidar_to_global[:3, 3]
    heading = Quaternion(matrix=rot) * Quaternion(axis=[0.0, 0.0, 1.0], radians=yaw)
    velocity = rot @ np.array([vx, vy, 0.0])
    return {
        "translation": centre.tolist(),
        "size": [w, length, h],
        "rotation": list(heading.normalised.elements),
        "velocity": velocity[:2].tolist(),
    }


def to_submission(predictions: Sequence[BoxPrediction], records: Mapping[str, SampleRecord]) -> dict:
    """A nuScenes detection submission (`{"meta", "results"}`) of the predictions, in the global frame."""
    results: dict[str, list[dict]] = {}
    for p in predictions:
        rec = records[p.sample_token]
        lidar_to_global = rec.ego_to_global @ rec.lidar_to_ego
        entries = []
        for box, score, label in zip(
            np.asarray(p.boxes), np.asarray(p.scores), np.asarray(p.labels), strict=True
        ):
            name = DETECTION_CLASSES[int(label)]
            g = box_to_global(box, lidar_to_global)
            entries.append(
                {
                    "sample_token": p.sample_token,
                    **g,
                    "detection_name": name,
                    "detection_score": float(score),
                    "attribute_name": attribute_for(name, np.asarray(g["velocity"])),
                }
            )
        results[p.sample_token] = entries
    meta = {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    return {"meta": meta, "results": results}


def eval_set_for(version: str, split: str) -> str:
    """The devkit split name for a dataset version and an index split (`v1.0-mini` + `val` -> `mini_val`)."""
    if split not in ("train", "val"):
        raise DataError(f"detection can only be evaluated on split 'train' or 'val', not {split!r}")
    if version.endswith("mini"):
        return f"mini_{split}"
    if version.endswith("trainval"):
        return split
    raise DataError(f"dataset version {version!r} has no annotated {split!r} split to evaluate detection on")


def in_range(box: DetectionBox, global_to_lidar: np.ndarray) -> bool:
    """Whether a global-frame box's centre lies in VAD's rectangle of the sample's lidar frame."""
    x, y, _ = global_to_lidar[:3, :3] @ np.asarray(box.translation) + global_to_lidar[:3, 3]
    return abs(x) <= RANGE_X and abs(y) <= RANGE_Y


class RangeDetectionEval(DetectionEval):
    """`DetectionEval` over chosen samples, with VAD's rectangular range instead of circular distances."""

    def __init__(
        self,
        nusc: NuScenes,
        config: DetectionConfig,
        result_path: Path,
        records: Mapping[str, SampleRecord],
        eval_set: str,
    ):
        # Deliberately not calling DetectionEval.__init__: it loads every sample of the split and filters by
        # circular distance; the fields set here are the ones its evaluate() reads.
        self.nusc = nusc
        self.cfg = config
        self.result_path = str(result_path)
        self.eval_set = eval_set
        self.verbose = False
        tokens = list(records)
        scenes = set(create_splits_scenes()[eval_set])
        for token in tokens:
            if records[token].scene_name not in scenes:
                raise DataError(
                    f"sample {token} of scene {records[token].scene_name} is not in split {eval_set}"
                )
        pred, self.meta = load_prediction(self.result_path, config.max_boxes_per_sample, DetectionBox)
        missing = [t for t in tokens if t not in pred.sample_tokens]
        if missing:
            raise DataError(f"{result_path}: no predictions for sample {missing[0]} ({len(missing)} missing)")
        self.pred_boxes = self._restrict(pred, records)
        self.gt_boxes = self._restrict(load_gt_of_sample_tokens(nusc, tokens, DetectionBox), records)
        self.sample_tokens = self.gt_boxes.sample_tokens

    def _restrict(self, boxes: EvalBoxes, records: Mapping[str, SampleRecord]) -> EvalBoxes:
        out = EvalBoxes()
        for token, rec in records.items():
            global_to_lidar = np.linalg.inv(rec.ego_to_global @ rec.lidar_to_ego)
            out.add_boxes(token, [b for b in boxes[token] if in_range(b, global_to_lidar)])
        out = add_center_dist(self.nusc, out)
        if not out.all:
            return out  # the devkit's filter cannot tell the box type of an empty set
        unbounded = {name: math.inf for name in self.cfg.class_range}
        return filter_eval_boxes(self.nusc, out, unbounded)


def detection_metrics(
    nusc: NuScenes, result_path: Path, records: Mapping[str, SampleRecord], *, eval_set: str
) -> dict[str, float]:
    """`det_nds`, `det_map`, `det_ap_<class>` and the TP errors `det_{ate,ase,aoe,ave,aae}`.

    `result_path` is a submission JSON from `to_submission`; `records` maps each evaluated sample token to
    its index record. NaN everywhere when the evaluated samples hold no GT box in range.
    """
    cfg = config_factory("detection_cvpr_2019")
    evaluator = RangeDetectionEval(nusc, cfg, result_path, records, eval_set)
    present = [
        name for name in cfg.class_range if any(b.detection_name == name for b in evaluator.gt_boxes.all)
    ]
    keys = ("det_nds", "det_map", "det_ate", "det_ase", "det_aoe", "det_ave", "det_aae")
    if not present:
        return dict.fromkeys(keys, float("nan"))
    cfg.class_names = present  # see the module docstring: absent classes have no defined AP
    metrics, _ = evaluator.evaluate()
    tp = metrics.tp_errors
    out = {
        "det_nds": float(metrics.nd_score),
        "det_map": float(metrics.mean_ap),
        "det_ate": tp["trans_err"],
        "det_ase": tp["scale_err"],
        "det_aoe": tp["orient_err"],
        "det_ave": tp["vel_err"],
        "det_aae": tp["attr_err"],
    }
    for name, ap in metrics.mean_dist_aps.items():
        out[f"det_ap_{name}"] = float(ap)
    return out
