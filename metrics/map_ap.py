"""Vectorized-map AP with the Chamfer distance, as MapTR and VAD compute it.

For each class and threshold (0.5, 1.0, 1.5 m): predictions of all samples are ranked by score; each is a
true positive when its nearest GT vector of the same sample (smallest Chamfer distance) is within the
threshold and not already taken by a higher-scored prediction, else a false positive (MapTR's greedy
`tpfp`). AP is the area under the interpolated precision-recall curve (mmdet's `area` mode).
Chamfer distance between two polylines `(P, 2)` and `(Q, 2)`: the mean of (mean over the first's points
of the distance to the nearest point of the second) and the reverse.

`map_ap` is the mean over classes and thresholds; a class with no GT vector in the evaluated samples has
no defined AP and is left out of the mean (its `map_ap_<class>` is NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from netroller.data.index import MAP_CLASSES

MAP_THRESHOLDS = (0.5, 1.0, 1.5)


class MapPrediction(Protocol):
    """The fields of a decoded prediction that map AP reads (`VADPrediction` has them)."""

    sample_token: str
    map_vectors: np.ndarray  # (M, P, 2)
    map_scores: np.ndarray  # (M,)
    map_labels: np.ndarray  # (M,)


def chamfer_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(M, G) symmetric Chamfer distances between polylines `(M, P, 2)` and `(G, Q, 2)`."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return np.zeros((pred.shape[0], gt.shape[0]))
    d = np.linalg.norm(pred[:, None, :, None, :] - gt[None, :, None, :, :], axis=-1)  # (M, G, P, Q)
    return (d.min(axis=3).mean(axis=2) + d.min(axis=2).mean(axis=2)) / 2


def _tp_fp(dist: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """(M,) 1 for a true positive, 0 for a false positive, one sample, one class."""
    tp = np.zeros(dist.shape[0])
    if dist.shape[1] == 0:
        return tp
    nearest = dist.argmin(axis=1)
    nearest_d = dist.min(axis=1)
    covered = np.zeros(dist.shape[1], dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        if nearest_d[i] <= threshold and not covered[nearest[i]]:
            covered[nearest[i]] = True
            tp[i] = 1.0
    return tp


def average_precision(tp: np.ndarray, scores: np.ndarray, num_gt: int) -> float:
    """Area under the interpolated precision-recall curve of ranked detections (mmdet `area` mode)."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(tp, dtype=np.float64)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / num_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def map_ap(
    predictions: Sequence[MapPrediction],
    gt_vectors: dict[str, np.ndarray],
    gt_labels: dict[str, np.ndarray],
) -> dict[str, float]:
    """`map_ap`, `map_ap_<class>` (mean over thresholds) and `map_ap_<class>_<thr>` for each threshold.

    `gt_vectors[token]` is `(G, P, 2)` and `gt_labels[token]` `(G,)`, in the lidar frame like the predictions.
    """
    out: dict[str, float] = {}
    class_means = []
    for c, name in enumerate(MAP_CLASSES):
        # The Chamfer distances do not depend on the threshold: compute them once per sample and class.
        per_sample, num_gt = [], 0
        for p in predictions:
            gt = np.asarray(gt_vectors[p.sample_token])[np.asarray(gt_labels[p.sample_token]) == c]
            sel = np.asarray(p.map_labels) == c
            pv, ps = np.asarray(p.map_vectors)[sel], np.asarray(p.map_scores, dtype=np.float64)[sel]
            num_gt += gt.shape[0]
            per_sample.append((chamfer_matrix(pv, gt), ps))
        scores = np.concatenate([ps for _, ps in per_sample])
        per_thr = []
        for thr in MAP_THRESHOLDS:
            tps = np.concatenate([_tp_fp(dist, ps, thr) for dist, ps in per_sample])
            ap = average_precision(tps, scores, num_gt)
            out[f"map_ap_{name}_{thr}"] = ap
            per_thr.append(ap)
        out[f"map_ap_{name}"] = float(np.mean(per_thr))
        if not np.isnan(out[f"map_ap_{name}"]):
            class_means.append(out[f"map_ap_{name}"])
    out["map_ap"] = float(np.mean(class_means)) if class_means else float("nan")
    return out
