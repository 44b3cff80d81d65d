"""Open-loop planning inputs and the L2 displacement metrics, in VAD's conventions.

Frame: everything here is the sample's lidar frame of the index (`netroller.data.index`): x to the right,
y forward, positions in metres at 0.5 s steps.

- `plan_l2_Ns` (VAD, also written as VAD's key `plan_L2_Ns`): per sample, the mean over steps 0.5 s .. N s
  of the per-step displacement; then the mean over samples.
- `plan_l2_at_Ns` (UniAD): the displacement at N s only, averaged over samples.
Only samples with all 6 future keyframes (ego_fut_mask all 1, VAD's `fut_valid_flag`) are scored.

VAD computes L2 in float32 (torch tensors of the float32 trajectories, the per-sample mean a float32, the
mean over samples a Python float sum); `plan_l2` does the same arithmetic with numpy. It agrees with the
official figures to float32 rounding, not bit for bit: torch's CPU float32 `sqrt` (torch 2.13) is not
correctly rounded (measured one ulp off numpy's on some inputs), which moves a figure by about 1e-8 m.
VAD's own test moves the trajectories to the GT's device, CUDA in its runs, whose float32 `sqrt` is
correctly rounded by default as numpy's is (a documented property, not measured here).
The collision metrics live in `netroller.metrics.collision` (VAD's) and `...collision_exact` (ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from netroller.data.index import SampleRecord

HORIZONS_S = (1, 2, 3)
STEPS_PER_SECOND = 2


@dataclass(frozen=True, kw_only=True)
class PlanningSample:
    """One sample's inputs to the planning metrics: the plan and the GT it is scored against."""

    plan: np.ndarray  # (6, 2) planned positions
    gt_traj: np.ndarray  # (6, 2) GT ego positions
    gt_mask: np.ndarray  # (6,) 1 where the GT future keyframe exists
    boxes: np.ndarray  # (N, 9) GT boxes, index convention
    labels: np.ndarray  # (N,) into DETECTION_CLASSES
    categories: np.ndarray  # (N,) nuScenes category-table index (what VAD's collision check keys on)
    fut_traj: np.ndarray  # (N, 6, 2) GT agent positions relative to the agent's current centre
    fut_yaw: np.ndarray  # (N, 6) GT agent heading change from its current heading
    fut_mask: np.ndarray  # (N, 6)
    num_lidar_pts: np.ndarray  # (N,) lidar points in each GT box

    @classmethod
    def of(cls, record: SampleRecord, plan: np.ndarray) -> PlanningSample:
        """The planning inputs of an index record and a planned `(6, 2)` trajectory."""
        return cls(
            plan=np.asarray(plan),
            gt_traj=record.ego_fut_traj,
            gt_mask=record.ego_fut_mask,
            boxes=record.gt_boxes,
            labels=record.gt_labels,
            categories=record.gt_categories,
            fut_traj=record.gt_fut_traj,
            fut_yaw=record.gt_fut_yaw,
            fut_mask=record.gt_fut_mask,
            num_lidar_pts=record.gt_num_lidar_pts,
        )

    @property
    def full_future(self) -> bool:
        """VAD's `fut_valid_flag`: all 6 future keyframes exist."""
        return bool(np.all(np.asarray(self.gt_mask) > 0.5))


def per_sample_mean(values: np.ndarray, steps: int) -> float:
    """VAD's per-sample figure: the float32 mean of the first `steps` float32 values, as a Python float."""
    v = np.asarray(values, dtype=np.float32)[:steps]
    total = np.float32(0.0)
    for x in v:  # torch sums a Python generator of 0-d float32 tensors one by one
        total = np.float32(total + x)
    return float(np.float32(total / np.float32(steps)))


def mean_over_samples(values: list[float]) -> float:
    """VAD's aggregation: the per-sample figures added one by one, divided by the number of samples."""
    if not values:
        return float("nan")
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


def plan_l2(samples: list[PlanningSample]) -> dict[str, float]:
    """`plan_l2_{1,2,3}s` (VAD), the same values under VAD's keys `plan_L2_{1,2,3}s`, and `plan_l2_at_{1,2,3}s`
    (UniAD), over the samples with all 6 future frames; NaN when there is no such sample."""
    dists = []
    for s in samples:
        if not s.full_future:
            continue
        d = np.asarray(s.plan, dtype=np.float32) - np.asarray(s.gt_traj, dtype=np.float32)  # (6, 2)
        dists.append(np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]))  # float32, as torch computes it
    out: dict[str, float] = {}
    for n in HORIZONS_S:
        steps = n * STEPS_PER_SECOND
        vad = mean_over_samples([per_sample_mean(d, steps) for d in dists])
        out[f"plan_l2_{n}s"] = vad
        out[f"plan_L2_{n}s"] = vad
        at = [float(d[steps - 1]) for d in dists]
        out[f"plan_l2_at_{n}s"] = float(np.mean(at)) if at else float("nan")
    return out


def plan_l2_by_scene(samples: Sequence[PlanningSample], scenes: Sequence[str]) -> dict[str, dict]:
    """`plan_l2_{1,2,3}s` of each scene's samples (`scenes[i]` is the scene of `samples[i]`) and the count of
    its samples with all 6 future frames; a scene without one gets None figures. On a split of few scenes an
    average hides what happens in each: a control can work on one scene and fail on another."""
    by_scene: dict[str, list[PlanningSample]] = {}
    for sample, scene in zip(samples, scenes, strict=True):
        by_scene.setdefault(scene, []).append(sample)
    out = {}
    for scene, group in sorted(by_scene.items()):
        figures = plan_l2(group)
        n = sum(s.full_future for s in group)
        out[scene] = {
            **{f"plan_l2_{h}s": (figures[f"plan_l2_{h}s"] if n else None) for h in HORIZONS_S},
            "num_planning_samples": n,
        }
    return out
