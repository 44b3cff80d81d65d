"""A planner without a model, to read planning figures against: the per-command mean of the training futures.

Every scored sample gets, as its plan, the mean ground-truth future of the training samples that share its
driving command (VAD's `ego_fut_cmd`: turn right, turn left, go straight), over the training samples with all
6 future keyframes; a command no training sample has gets the mean over all of them. It reads no camera, no
ego status and no GM latents, so a model that does not beat it has learned nothing about the scene's future
from its inputs that the command alone does not say. Scored with the same `plan_l2` and `plan_collision` as
every evaluation (VAD's conventions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netroller.data.index import Index, SampleRecord
from netroller.errors import DataError
from netroller.metrics.collision import plan_collision
from netroller.metrics.planning import PlanningSample, plan_l2, plan_l2_by_scene

REFERENCE_LABEL = "no model: per-command mean of the training futures"


def command_means(train: Sequence[SampleRecord]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The mean (6, 2) future per command over the training records with a full future, and the mean over all
    of them (for a command none has); DataError when no training record has a full future."""
    full = [r for r in train if np.all(np.asarray(r.ego_fut_mask) > 0.5)]
    if not full:
        raise DataError("reference planner: no training sample has all 6 future keyframes")
    futures = np.stack([np.asarray(r.ego_fut_traj, dtype=np.float64) for r in full])
    commands = np.array([int(r.command) for r in full])
    means = {int(c): futures[commands == c].mean(axis=0) for c in np.unique(commands)}
    return means, futures.mean(axis=0)


def reference_metrics(index: Index, split: str = "val", max_samples: int | None = None) -> dict:
    """Planning metrics of the per-command mean planner on the first `max_samples` samples of `split`, with
    `num_samples` and `reference_planner` (its label)."""
    means, overall = command_means(index.split("train"))
    records = index.split(split)[:max_samples]
    samples = [PlanningSample.of(r, means.get(int(r.command), overall).astype(np.float32)) for r in records]
    return {
        **plan_l2(samples),
        "plan_l2_by_scene": plan_l2_by_scene(samples, [r.scene_name for r in records]),
        **plan_collision(samples),
        "num_samples": len(samples),
        "split": split,
        "reference_planner": REFERENCE_LABEL,
    }
