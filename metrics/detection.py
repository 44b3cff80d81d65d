"""3D detection metrics (NDS, mAP) exactly as VAD's own evaluation computes them, through nuscenes-devkit.

VAD's evaluation (`VADCustomNuScenesDataset._format_bbox` + `NuScenesEval_custom` with its config
`vad_nusc_detection_cvpr_2019.json`) is the devkit's `DetectionEval` with three changes, all reproduced:
- Predictions: a box is dropped below score 0.2, and when its centre in the ego frame (after the record's
  `lidar_to_ego`) has |x| > 30 m or |y| > 15 m. The rest go to the global frame as mmdet3d's formatter does
  (centre through `lidar_to_ego` then `ego_to_global`, heading and velocity rotated alike, the attribute
  chosen from the speed).
- Range: GT and predictions are kept when |dx| < 30 m and |dy| < 15 m, where (dx, dy) is the box centre
  minus the ego position in the GLOBAL frame, not rotated into the ego's (the devkit's `ego_translation`,
  which VAD compares per axis instead of taking its norm). The range is therefore a global-axis-aligned
  60 m x 30 m rectangle, whatever the ego's heading; VAD's figures are computed so.
- The devkit's other rules still apply: GT boxes without lidar or radar points, bicycles and motorcycles
  in bike racks are dropped.
Matching, AP, TP errors and NDS are the devkit's `evaluate()` unchanged (VAD's copy of it is the same code),
over all 10 classes: a class without GT in the evaluated samples scores AP 0 and TP errors 1, as there.

The devkit evaluates every sample of a split; here the evaluated samples are the records given (each must
belong to the devkit split `eval_set`), which on the whole split is the same.
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

# VAD's vad_nusc_detection_cvpr_2019.json: the same range for every class. class_range_x bounds the ego
# frame's x (forward) and the global dx; class_range_y the ego frame's y (left) and the global dy.
RANGE_X = 30.0
RANGE_Y = 15.0
SCORE_MIN = 0.2  # VAD's `_format_bbox(score_thresh=0.2)`

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


def in_ego_range(box: np.ndarray, lidar_to_ego: np.ndarray) -> bool:
    """VAD's prediction filter: the centre in the ego frame within |x| <= 30 m and |y| <= 15 m."""
    x, y, _ = lidar_to_ego[:3, :3] @ np.asarray(box[:3], dtype=np.float64) + lidar_to_ego[:3, 3]
    return abs(x) <= RANGE_X and abs(y) <= RANGE_Y


def to_submission(predictions: Sequence[BoxPrediction], records: Mapping[str, SampleRecord]) -> dict:
    """A nuScenes detection submission (`{"meta", "results"}`) of the predictions VAD's formatter keeps
    (score >= 0.2, in its ego-frame range), in the global frame."""
    results: dict[str, list[dict]] = {}
    for p in predictions:
        rec = records[p.sample_token]
        lidar_to_global = rec.ego_to_global @ rec.lidar_to_ego
        entries = []
        for box, score, label in zip(
            np.asarray(p.boxes), np.asarray(p.scores), np.asarray(p.labels), strict=True
        ):
            if float(score) < SCORE_MIN or not in_ego_range(box, rec.lidar_to_ego):
                continue
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


def in_vad_range(box: DetectionBox) -> bool:
    """VAD's range on a box with the devkit's `ego_translation` (global-frame offset from the ego)."""
    dx, dy, _ = box.ego_translation
    return abs(dx) < RANGE_X and abs(dy) < RANGE_Y


class RangeDetectionEval(DetectionEval):
    """`DetectionEval` over chosen samples, with VAD's range instead of the devkit's circular distances."""

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
        for token in records:
            out.add_boxes(token, list(boxes[token]))
        out = add_center_dist(self.nusc, out)
        for token in records:
            out.boxes[token] = [b for b in out[token] if in_vad_range(b)]
        if not out.all:
            return out  # the devkit's filter cannot tell the box type of an empty set
        unbounded = {name: math.inf for name in self.cfg.class_range}
        return filter_eval_boxes(self.nusc, out, unbounded)


def detection_metrics(
    nusc: NuScenes, result_path: Path, records: Mapping[str, SampleRecord], *, eval_set: str
) -> dict[str, float]:
    """`det_nds`, `det_map`, `det_ap_<class>`, the TP errors `det_{ate,ase,aoe,ave,aae}`, and the same NDS
    and mAP under VAD's keys `pts_bbox_NuScenes/NDS`, `pts_bbox_NuScenes/mAP`.

    `result_path` is a submission JSON from `to_submission`; `records` maps each evaluated sample token to
    its index record.
    """
    cfg = config_factory("detection_cvpr_2019")  # VAD's config but for its range, which _restrict applies
    evaluator = RangeDetectionEval(nusc, cfg, result_path, records, eval_set)
    metrics, _ = evaluator.evaluate()
    tp = metrics.tp_errors
    out = {
        "det_nds": float(metrics.nd_score),
        "det_map": float(metrics.mean_ap),
        "det_ate": float(tp["trans_err"]),
        "det_ase": float(tp["scale_err"]),
        "det_aoe": float(tp["orient_err"]),
        "det_ave": float(tp["vel_err"]),
        "det_aae": float(tp["attr_err"]),
        "pts_bbox_NuScenes/NDS": float(metrics.nd_score),
        "pts_bbox_NuScenes/mAP": float(metrics.mean_ap),
    }
    for name, ap in metrics.mean_dist_aps.items():
        out[f"det_ap_{name}"] = float(ap)
    return out
