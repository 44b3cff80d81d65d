"""All evaluation figures of decoded predictions, in VAD's conventions and under VAD's key names as well.

`compute_metrics` is what `netroller eval` writes to metrics.json: planning (L2, VAD's box collision, our
exact collision), detection (NDS, mAP through nuscenes-devkit) and map AP, each as its module documents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from netroller.data.index import SampleRecord
from netroller.data.map_vectors import MapCache
from netroller.metrics.collision import plan_collision
from netroller.metrics.collision_exact import plan_collision_exact
from netroller.metrics.detection import detection_metrics, to_submission
from netroller.metrics.map_ap import map_ap
from netroller.metrics.planning import PlanningSample, plan_l2, plan_l2_by_scene

# VAD's own result names that metrics.json carries beside ours (same values; VAD's units: the collision
# rate a fraction, not a percentage).
VAD_KEYS = (
    *(f"plan_L2_{n}s" for n in (1, 2, 3)),
    *(f"plan_obj_box_col_{n}s" for n in (1, 2, 3)),
    "pts_bbox_NuScenes/NDS",
    "pts_bbox_NuScenes/mAP",
    "NuscMap_chamfer/divider_AP",
    "NuscMap_chamfer/ped_crossing_AP",
    "NuscMap_chamfer/boundary_AP",
    "NuscMap_chamfer/mAP",
)


def gt_polylines(records: Sequence[SampleRecord], maps: MapCache) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Each record's whole GT map elements (before the index's 20-point resampling), lidar frame."""
    out = {}
    for r in records:
        lines = maps.polylines(r.map_name, r.ego_to_global @ r.lidar_to_ego)
        out[r.sample_token] = [(label, np.asarray(line.coords)[:, :2]) for label, line in lines]
    return out


def in_vad_order(preds: Sequence, nusc) -> list:
    """The predictions in the order VAD evaluates samples: its info files follow the devkit's sample table.
    Detection and map AP rank predictions of all samples together, and exactly tied scores keep this order."""
    position = {s["token"]: i for i, s in enumerate(nusc.sample)}
    return sorted(preds, key=lambda p: position[p.sample_token])


def compute_metrics(
    preds: Sequence, records: Mapping[str, SampleRecord], *, nusc, eval_set: str, work: Path, dataroot: Path
) -> dict:
    """Planning, detection and map metrics of decoded predictions; `work` receives results_nusc.json."""
    preds = in_vad_order(preds, nusc)
    recs = [records[p.sample_token] for p in preds]
    samples = [PlanningSample.of(r, p.plan_traj) for p, r in zip(preds, recs, strict=True)]
    out: dict = {}
    out.update(plan_l2(samples))
    out["plan_l2_by_scene"] = plan_l2_by_scene(samples, [r.scene_name for r in recs])
    out.update(plan_collision(samples))
    out.update(plan_collision_exact(samples))
    submission = work / "results_nusc.json"
    submission.write_text(json.dumps(to_submission(preds, records)))
    out.update(detection_metrics(nusc, submission, {r.sample_token: r for r in recs}, eval_set=eval_set))
    out.update(map_ap(preds, gt_polylines(recs, MapCache(dataroot))))
    out["num_samples"] = len(preds)
    out["num_planning_samples"] = int(sum(s.full_future for s in samples))
    return out
