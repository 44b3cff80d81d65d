"""Vectorised-map AP exactly as VAD's own map evaluation computes it (MapTR's Chamfer AP).

What VAD's `_evaluate_single` (map part) with `map_utils/{mean_ap, tpfp, tpfp_chamfer}.py` does, reproduced
here step for step:
- Every predicted polyline (its 20 points) and every GT polyline (the whole clipped map element, not its
  20-point resampling: VAD's `_format_gt` keeps `instance_list` as it is) is resampled to 100 points evenly
  along its length (shapely `interpolate`). Predictions with fewer than 2 points are skipped.
- Per sample and class, a prediction-GT pair gets a score only when the two lines' buffers (2 m, flat caps,
  mitre joins) intersect: minus the Chamfer distance, the mean of (mean over the prediction's points of
  the distance to the nearest GT point) and the reverse; other pairs score -100. (Pairs beyond the largest
  threshold are skipped, which changes no outcome; see `match_scores`.)
- Per sample, predictions in descending score order take their best-scoring GT when that score is at least
  minus the threshold (Chamfer <= 0.5 / 1.0 / 1.5 m) and the GT is not yet taken: true positive; else false
  positive. A sample without GT of the class makes every prediction a false positive.
- All samples' predictions of the class are ranked by score together (numpy's default sort, as VAD's),
  precision and recall accumulated in float32 (eps float32 guards), AP the area under the precision
  envelope (mmdet's `area` mode), stored as a float32.
- A class's AP is the mean over the three thresholds; `map_ap` the mean over the three classes, a class
  without any GT counting as 0 (VAD averages all classes; there, recall is 0 so its AP is 0).

Keys: `map_ap`, `map_ap_<class>`, `map_ap_<class>_<thr>`, and VAD's `NuscMap_chamfer/mAP`,
`NuscMap_chamfer/<class>_AP`, `NuscMap_chamfer/<class>_AP_thr_<thr>` (the same values).
Exactly tied scores across samples keep the order of the samples given (numpy's sort is not stable, but
deterministic); `netroller.metrics.scoring` passes them in VAD's order, the devkit's sample table order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import shapely
from scipy.spatial.distance import cdist
from shapely.geometry import LineString

from netroller.data.index import MAP_CLASSES
from netroller.data.map_vectors import resample

MAP_THRESHOLDS = (0.5, 1.0, 1.5)
EVAL_POINTS = 100  # VAD's num_fixed_sample_pts, for predictions and GT alike
BUFFER = 2.0  # m: the gating buffer's half width (custom_polyline_score's linewidth)
NO_MATCH = -100.0


class MapPrediction(Protocol):
    """The fields of a decoded prediction that map AP reads (`VADPrediction` has them)."""

    sample_token: str
    map_vectors: np.ndarray  # (M, P, 2)
    map_scores: np.ndarray  # (M,)
    map_labels: np.ndarray  # (M,)


GTPolylines = Sequence[tuple[int, np.ndarray]]  # (label into MAP_CLASSES, (P, 2) points) per element


def _resampled(lines: Sequence[np.ndarray]) -> np.ndarray:
    """(K, 100, 2) float64: each polyline resampled to 100 points along its length."""
    if not lines:
        return np.zeros((0, EVAL_POINTS, 2))
    return np.stack([resample(LineString(np.asarray(ln)), EVAL_POINTS) for ln in lines])


def match_scores(pred: np.ndarray, gt: np.ndarray, *, within: float = max(MAP_THRESHOLDS)) -> np.ndarray:
    """(K, G) matching scores of 100-point polylines: minus the Chamfer distance where the two lines' 2 m
    buffers intersect, else -100, as VAD's `custom_polyline_score`, for every pair within `within` metres.

    A pair further apart (Chamfer distance > `within`, the largest threshold) also gets -100: it can match at
    no threshold, and it cannot be a prediction's best pair while a pair within reach exists, so no outcome
    changes; computing its distance and both buffers, as VAD does, is what made the evaluation slow.
    """
    out = np.full((pred.shape[0], gt.shape[0]), NO_MATCH)
    if out.size == 0:
        return out
    # Lower bound of the Chamfer distance: the gap between the lines' bounding boxes.
    lo_p, hi_p, lo_g, hi_g = pred.min(1), pred.max(1), gt.min(1), gt.max(1)
    gap = np.maximum(0.0, np.maximum(lo_g[None] - hi_p[:, None], lo_p[:, None] - hi_g[None]))  # (K, G, 2)
    near = []
    for i, j in zip(*np.nonzero(np.hypot(gap[..., 0], gap[..., 1]) <= within + 1e-9), strict=True):
        d = cdist(pred[i], gt[j], "euclidean")
        chamfer = (d.min(-2).mean() + d.min(-1).mean()) / 2
        if chamfer <= within:
            near.append((i, j, chamfer))
    if not near:
        return out
    style = dict(cap_style="flat", join_style="mitre")
    ii = sorted({i for i, _, _ in near})
    jj = sorted({j for _, j, _ in near})
    # A zero-length line (all points equal) has an empty buffer, so it never matches, as in VAD; GEOS
    # divides by its zero length on the way, which numpy would report as a warning.
    with np.errstate(divide="ignore", invalid="ignore"):
        pred_buf = dict(zip(ii, shapely.buffer(shapely.linestrings(pred[ii]), BUFFER, **style), strict=True))
        gt_buf = dict(zip(jj, shapely.buffer(shapely.linestrings(gt[jj]), BUFFER, **style), strict=True))
    for i, j, chamfer in near:
        if pred_buf[i].intersects(gt_buf[j]):
            out[i, j] = -chamfer
    return out


def tp_fp(scores: np.ndarray, match: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(K,) float32 true / false positive flags of one sample and class (greedy in descending score)."""
    tp = np.zeros(scores.shape[0], dtype=np.float32)
    fp = np.zeros(scores.shape[0], dtype=np.float32)
    if match.shape[1] == 0:
        fp[...] = 1
        return tp, fp
    if scores.shape[0] == 0:
        return tp, fp
    best = match.max(axis=1)
    best_gt = match.argmax(axis=1)
    taken = np.zeros(match.shape[1], dtype=bool)
    for i in np.argsort(-scores):
        if best[i] >= -threshold and not taken[best_gt[i]]:
            taken[best_gt[i]] = True
            tp[i] = 1
        else:
            fp[i] = 1
    return tp, fp


def average_precision(recall: np.ndarray, precision: np.ndarray) -> np.float32:
    """mmdet's `area` AP: the area under the precision envelope, from recall 0 to 1, as a float32."""
    mrec = np.concatenate([np.zeros(1, recall.dtype), recall, np.ones(1, recall.dtype)])
    mpre = np.concatenate([np.zeros(1, recall.dtype), precision, np.zeros(1, recall.dtype)])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    ap = np.zeros(1, dtype=np.float32)
    ap[0] = np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])
    return ap[0]


def class_ap(
    per_sample: Sequence[tuple[np.ndarray, np.ndarray]], num_gts: int, threshold: float
) -> np.float32:
    """AP of one class at one threshold from each sample's (scores, match scores)."""
    flags = [tp_fp(scores, match, threshold) for scores, match in per_sample]
    scores = np.concatenate([s for s, _ in per_sample]) if per_sample else np.zeros(0)
    order = np.argsort(-scores)
    tp = np.cumsum(np.concatenate([t for t, _ in flags])[order] if flags else np.zeros(0, np.float32))
    fp = np.cumsum(np.concatenate([f for _, f in flags])[order] if flags else np.zeros(0, np.float32))
    eps = np.finfo(np.float32).eps
    recall = tp / np.maximum(num_gts, eps)
    precision = tp / np.maximum(tp + fp, eps)
    return average_precision(recall, precision)


def map_ap(predictions: Sequence[MapPrediction], gt_polylines: Mapping[str, GTPolylines]) -> dict[str, float]:
    """VAD's map AP of the predictions against each sample's GT polylines (lidar frame, metres)."""
    out: dict[str, float] = {}
    class_means = []
    for c, name in enumerate(MAP_CLASSES):
        # The match scores do not depend on the threshold: computed once per sample and class.
        per_sample, num_gts = [], 0
        for p in predictions:
            labels = np.asarray(p.map_labels).reshape(-1)
            vectors = np.asarray(p.map_vectors, dtype=np.float32)
            kept = [i for i in np.flatnonzero(labels == c) if len(vectors[i]) >= 2]
            pred = _resampled([vectors[i] for i in kept])
            scores = np.asarray(p.map_scores, dtype=np.float32)[kept].astype(np.float64)
            gt = _resampled([pts for label, pts in gt_polylines[p.sample_token] if label == c])
            num_gts += gt.shape[0]
            per_sample.append((scores, match_scores(pred, gt)))
        aps = []
        for thr in MAP_THRESHOLDS:
            ap = float(class_ap(per_sample, num_gts, thr))
            out[f"map_ap_{name}_{thr}"] = ap
            out[f"NuscMap_chamfer/{name}_AP_thr_{thr}"] = ap
            aps.append(ap)
        mean = float(np.mean(np.asarray(aps, dtype=np.float64)))
        out[f"map_ap_{name}"] = mean
        out[f"NuscMap_chamfer/{name}_AP"] = mean
        class_means.append(mean)
    out["map_ap"] = float(np.mean(class_means))
    out["NuscMap_chamfer/mAP"] = out["map_ap"]
    return out
