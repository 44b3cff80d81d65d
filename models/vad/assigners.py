"""VAD's one-to-one matching of queries to ground truth (the official `HungarianAssigner3D` and
`MapHungarianAssigner3D`), solved with scipy's `linear_sum_assignment` on the CPU as the official.

Agents: cost = focal classification cost + L1 between the first 8 values of the predicted box code and the
GT's code. Map: cost = focal classification cost + the smallest, over the GT's equivalent point orders, L1
between the normalised points (`OrderedPtsL1Cost`); that order is the target of the match. The official map
assigner also adds a box L1 and a GIoU cost, both weighted 0 in the configs, so they are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from netroller.models.vad.coders import Range, encode_boxes, normalize_points

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


@dataclass
class Assignment:
    """Matched pairs of one sample, in increasing query order; n = min(queries, GT)."""

    pred_idx: Tensor  # [n] long query index
    gt_idx: Tensor  # [n] long GT index
    order_idx: Tensor | None = None  # [n] long: the map GT order each query is matched under (map only)

    def __len__(self) -> int:
        return self.pred_idx.numel()


def focal_cost(cls_logits: Tensor, gt_labels: Tensor, weight: float, eps: float = 1e-12) -> Tensor:
    """[Q, K] logits, [N] labels -> [Q, N] focal classification cost (mmdet's `FocalLossCost`)."""
    p = cls_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - FOCAL_ALPHA) * p.pow(FOCAL_GAMMA)
    pos = -(p + eps).log() * FOCAL_ALPHA * (1 - p).pow(FOCAL_GAMMA)
    return (pos[:, gt_labels] - neg[:, gt_labels]) * weight


def ordered_points_cost(pts: Tensor, gt_orders: Tensor) -> tuple[Tensor, Tensor]:
    """[Q, P, 2] predicted and [N, S, P, 2] GT normalised points -> [Q, N] L1 summed over the points under
    each GT's best order, and that order [Q, N]."""
    n, s = gt_orders.shape[:2]
    cost = torch.cdist(pts.flatten(1), gt_orders.reshape(n * s, -1), p=1)  # [Q, N*S]
    return cost.view(pts.shape[0], n, s).min(-1)


def _solve(cost: Tensor) -> tuple[Tensor, Tensor]:
    rows, cols = linear_sum_assignment(cost.detach().cpu())
    device = cost.device
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)


def _empty(device: torch.device, with_order: bool) -> Assignment:
    none = torch.zeros(0, dtype=torch.long, device=device)
    return Assignment(none, none, none if with_order else None)


def assign_boxes(
    cls_logits: Tensor,
    box_codes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    cls_weight: float,
    reg_weight: float,
) -> Assignment:
    """Match [A, K] logits and [A, 10] box codes to [N, 9] GT boxes with [N] labels."""
    if gt_boxes.shape[0] == 0 or cls_logits.shape[0] == 0:
        return _empty(cls_logits.device, with_order=False)
    with torch.no_grad():
        cost = focal_cost(cls_logits, gt_labels, cls_weight)
        cost = cost + torch.cdist(box_codes[:, :8], encode_boxes(gt_boxes)[:, :8], p=1) * reg_weight
    rows, cols = _solve(cost)
    return Assignment(rows, cols)


def assign_map(
    cls_logits: Tensor,
    pts: Tensor,
    gt_shifts: Tensor,
    gt_labels: Tensor,
    pc_range: Range,
    *,
    cls_weight: float,
    pts_weight: float,
) -> Assignment:
    """Match [V, K] logits and [V, P, 2] normalised points to [M, S, P, 2] GT orders in metres with [M]
    labels; `order_idx` is the order each matched GT is compared under."""
    if gt_shifts.shape[0] == 0 or cls_logits.shape[0] == 0:
        return _empty(cls_logits.device, with_order=True)
    with torch.no_grad():
        pts_cost, order = ordered_points_cost(pts, normalize_points(gt_shifts, pc_range))
        cost = focal_cost(cls_logits, gt_labels, cls_weight) + pts_cost * pts_weight
    rows, cols = _solve(cost)
    return Assignment(rows, cols, order[rows, cols])
