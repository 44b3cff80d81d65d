"""VAD's box and map codes and its NMS-free decoding (the official `CustomNMSFreeCoder` with the agents'
futures, `MapNMSFreeCoder`, and the head's `get_bboxes`).

Box code (what the regression branch predicts, 10 values): cx, cy, log w, log l, cz, log h, sin yaw, cos yaw,
vx, vy, in metres of the lidar frame with cz at the box's gravity centre. A GT box is x, y, z, w, l, h, yaw,
vx, vy with z at the gravity centre and yaw in the official info files' convention (`-yaw_nuscenes - pi/2`);
the code only takes its sine and cosine.

Map code: points and boxes normalised to [0, 1] over the x, y extent of `pc_range`; map boxes are
(xmin, ymin, xmax, ymax) in metres, normalised as (cx, cy, w, h).

Decoding keeps, per sample, the top-k (query, class) pairs by sigmoid score over the last decoder layer (a
query may appear under several classes), and then the ones whose centre lies in the post-centre range; the
official configs set no score threshold, so none is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from netroller.models.vad.config import VAD_POST_CENTER_RANGE, VADConfig
from netroller.models.vad.outputs import VADOutputs

Range = Sequence[float]


def encode_boxes(boxes: Tensor) -> Tensor:
    """[..., 9] GT boxes (x, y, z, w, l, h, yaw, vx, vy) -> [..., 10] box code (official `normalize_bbox`).

    A zero size gives -inf in the code; the losses leave such rows out, as the official does.
    """
    x, y, z = boxes[..., 0:1], boxes[..., 1:2], boxes[..., 2:3]
    log_w, log_l, log_h = boxes[..., 3:4].log(), boxes[..., 4:5].log(), boxes[..., 5:6].log()
    yaw = boxes[..., 6:7]
    return torch.cat(
        (x, y, log_w, log_l, z, log_h, yaw.sin(), yaw.cos(), boxes[..., 7:8], boxes[..., 8:9]), dim=-1
    )


def decode_boxes(codes: Tensor) -> Tensor:
    """[..., 10] box code -> [..., 9] boxes (x, y, z, w, l, h, yaw, vx, vy), z at the gravity centre."""
    yaw = torch.atan2(codes[..., 6:7], codes[..., 7:8])
    sizes = codes[..., [2, 3, 5]].exp()  # w, l, h
    return torch.cat((codes[..., 0:2], codes[..., 4:5], sizes, yaw, codes[..., 8:10]), dim=-1)


def normalize_points(points: Tensor, pc_range: Range) -> Tensor:
    """[..., 2] metres -> [..., 2] in [0, 1] over pc_range's x, y extent."""
    x = (points[..., 0:1] - pc_range[0]) / (pc_range[3] - pc_range[0])
    y = (points[..., 1:2] - pc_range[1]) / (pc_range[4] - pc_range[1])
    return torch.cat((x, y), dim=-1)


def denormalize_points(points: Tensor, pc_range: Range) -> Tensor:
    """Inverse of `normalize_points`."""
    x = points[..., 0:1] * (pc_range[3] - pc_range[0]) + pc_range[0]
    y = points[..., 1:2] * (pc_range[4] - pc_range[1]) + pc_range[1]
    return torch.cat((x, y), dim=-1)


def normalize_map_boxes(boxes: Tensor, pc_range: Range) -> Tensor:
    """[..., 4] (xmin, ymin, xmax, ymax) metres -> [..., 4] normalised (cx, cy, w, h)."""
    span_x, span_y = pc_range[3] - pc_range[0], pc_range[4] - pc_range[1]
    cx = ((boxes[..., 0:1] + boxes[..., 2:3]) / 2 - pc_range[0]) / span_x
    cy = ((boxes[..., 1:2] + boxes[..., 3:4]) / 2 - pc_range[1]) / span_y
    w = (boxes[..., 2:3] - boxes[..., 0:1]) / span_x
    h = (boxes[..., 3:4] - boxes[..., 1:2]) / span_y
    return torch.cat((cx, cy, w, h), dim=-1)


def denormalize_map_boxes(boxes: Tensor, pc_range: Range) -> Tensor:
    """[..., 4] normalised (cx, cy, w, h) -> [..., 4] (xmin, ymin, xmax, ymax) metres."""
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
    scale = xyxy.new_tensor([pc_range[3] - pc_range[0], pc_range[4] - pc_range[1]] * 2)
    offset = xyxy.new_tensor([pc_range[0], pc_range[1]] * 2)
    return xyxy * scale + offset


@dataclass
class DetectionResult:
    """One sample's decoded agents, best first; k <= max_boxes after the centre-range filter."""

    boxes: np.ndarray  # [k, 9] x, y, z, w, l, h, yaw, vx, vy; z at the box BOTTOM, as get_bboxes hands the
    #                    boxes to LiDARInstance3DBoxes (gravity-centre z = z + h / 2)
    scores: np.ndarray  # [k] sigmoid score of the box's class
    labels: np.ndarray  # [k] class index
    trajs: np.ndarray  # [k, fut_mode, fut_ts * 2] the query's future offsets, as predicted (not decoded)
    queries: np.ndarray  # [k] the agent query each box comes from


@dataclass
class MapResult:
    """One sample's decoded map vectors, best first; k <= max_map after the centre-range filter."""

    boxes: np.ndarray  # [k, 4] xmin, ymin, xmax, ymax in metres
    scores: np.ndarray  # [k]
    labels: np.ndarray  # [k] map class (divider, ped_crossing, boundary)
    points: np.ndarray  # [k, num_pts, 2] metres


def _top_k(cls_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """[Q, K] logits -> scores, query indices, labels of the k best (query, class) pairs."""
    num_classes = cls_logits.shape[-1]
    # A small configuration can have fewer (query, class) pairs than the coder keeps.
    scores, flat = cls_logits.sigmoid().reshape(-1).topk(min(k, cls_logits.numel()))
    return scores, torch.div(flat, num_classes, rounding_mode="floor"), flat % num_classes


def decode_detections(
    outputs: VADOutputs, cfg: VADConfig, post_center_range: Range = VAD_POST_CENTER_RANGE
) -> list[DetectionResult]:
    """The official detection decoding of the last decoder layer, one result per sample."""
    lo = torch.tensor(post_center_range[:3])
    hi = torch.tensor(post_center_range[3:])
    results = []
    with torch.no_grad():
        for cls_logits, codes, trajs in zip(
            outputs.all_cls_scores[-1], outputs.all_bbox_preds[-1], outputs.all_traj_preds[-1], strict=True
        ):
            scores, query, labels = _top_k(cls_logits.float(), cfg.max_boxes)
            boxes = decode_boxes(codes[query].float()).cpu()  # [k, 9]
            keep = ((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi)).all(1)
            boxes = boxes[keep]
            boxes[:, 2] = boxes[:, 2] - boxes[:, 5] * 0.5  # gravity centre -> bottom centre
            results.append(
                DetectionResult(
                    boxes=boxes.numpy(),
                    scores=scores.cpu()[keep].numpy(),
                    labels=labels.cpu()[keep].numpy(),
                    trajs=trajs[query].float().cpu()[keep].numpy(),
                    queries=query.cpu()[keep].numpy(),
                )
            )
    return results


def decode_map(
    outputs: VADOutputs, cfg: VADConfig, post_center_range: Range = VAD_POST_CENTER_RANGE
) -> list[MapResult]:
    """The official map decoding of the last map decoder layer, one result per sample. The official map
    coder's range is (x_min, y_min) twice then (x_max, y_max) twice, checked on all four box values; it is
    built here from the detection range's x, y bounds (the configs' values: [-20, -35] .. [20, 35])."""
    lo = torch.tensor([post_center_range[0], post_center_range[1]] * 2)
    hi = torch.tensor([post_center_range[3], post_center_range[4]] * 2)
    results = []
    with torch.no_grad():
        for cls_logits, boxes, points in zip(
            outputs.map_all_cls_scores[-1],
            outputs.map_all_bbox_preds[-1],
            outputs.map_all_pts_preds[-1],
            strict=True,
        ):
            scores, query, labels = _top_k(cls_logits.float(), cfg.max_map)
            xyxy = denormalize_map_boxes(boxes[query].float(), cfg.pc_range).cpu()  # [k, 4]
            keep = ((xyxy >= lo) & (xyxy <= hi)).all(1)
            results.append(
                MapResult(
                    boxes=xyxy[keep].numpy(),
                    scores=scores.cpu()[keep].numpy(),
                    labels=labels.cpu()[keep].numpy(),
                    points=denormalize_points(points[query].float(), cfg.pc_range).cpu()[keep].numpy(),
                )
            )
    return results
