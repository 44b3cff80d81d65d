"""VAD's losses as pure functions of (outputs, targets, command, config); `vad_loss` returns every named
term and their weighted "total".

Detection: Hungarian matching (focal class cost + box L1), focal classification over all queries, L1 on the
matched encoded boxes. Motion: on the matched agents, L1 of the best of the modes (masked by each future's
validity) plus the classification of that best mode. Map: Hungarian matching with the permutation-invariant
point cost, focal classification, point L1 under the best ordering. Planning: L1 of the command's mode with the
future mask, plus VAD's three constraints computed against ground truth: ego-agent collision, ego-boundary
and lane direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from netroller.data.index import MAP_CLASSES
from netroller.models.vad.batch import VADTargets
from netroller.models.vad.box_coder import encode_boxes, normalize_points
from netroller.models.vad.config import VADConfig
from netroller.models.vad.matching import focal_cost, hungarian, map_permutations, map_points_cost
from netroller.models.vad.outputs import VADOutputs

# VAD's code weights: velocities count 0.2 of the other box terms.
BOX_CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
DIVIDER = MAP_CLASSES.index("divider")
BOUNDARY = MAP_CLASSES.index("boundary")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss of [..., K] logits against {0, 1} targets of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    return (loss * (alpha * targets + (1 - alpha) * (1 - targets))).sum()


def _one_hot(num: int, classes: int, rows: Tensor, labels: Tensor, like: Tensor) -> Tensor:
    t = like.new_zeros(num, classes)
    t[rows, labels] = 1.0
    return t


def detection_and_motion_loss(out: VADOutputs, tgt: VADTargets, cfg: VADConfig) -> dict[str, Tensor]:
    code_w = out.det_boxes.new_tensor(BOX_CODE_WEIGHTS)
    cls_l, box_l, mot_reg, mot_cls = [], [], [], []
    num_gt = max(1, sum(len(lab) for lab in tgt.labels))
    num_fut = 0
    for b in range(out.det_logits.shape[0]):
        logits, codes = out.det_logits[b], out.det_boxes[b]  # [A, K], [A, 10]
        gt_codes = encode_boxes(tgt.boxes[b], out.pc_range)  # [N, 10]
        with torch.no_grad():
            cost = cfg.w_cls * focal_cost(logits, tgt.labels[b]) + cfg.w_box * torch.cdist(
                codes[:, :8], gt_codes[:, :8], p=1
            )
        rows, cols = hungarian(cost)
        cls_target = _one_hot(logits.shape[0], logits.shape[1], rows, tgt.labels[b][cols], logits)
        cls_l.append(sigmoid_focal_loss(logits, cls_target))
        box_l.append(((codes[rows] - gt_codes[cols]).abs() * code_w).sum())
        # Motion on matched agents that have at least one valid future step.
        mask = tgt.agent_fut_mask[b][cols]  # [n, T]
        keep = mask.sum(-1) > 0
        if keep.any():
            traj = out.motion_traj[b, rows[keep]]  # [n, M, T, 2]
            gt = tgt.agent_fut_traj[b][cols[keep]]  # [n, T, 2]
            m = mask[keep]
            err = ((traj - gt[:, None]).abs().sum(-1) * m[:, None]).sum(-1) / m.sum(
                -1, keepdim=True
            )  # [n, M]
            best = err.argmin(-1)
            mot_reg.append(err.gather(1, best[:, None]).sum())
            mot_cls.append(F.cross_entropy(out.motion_logits[b, rows[keep]], best, reduction="sum"))
            num_fut += int(keep.sum())
    zero = out.det_logits.sum() * 0
    return {
        "det_cls": torch.stack(cls_l).sum() / num_gt,
        "det_box": torch.stack(box_l).sum() / num_gt,
        "motion_reg": torch.stack(mot_reg).sum() / num_fut if mot_reg else zero,
        "motion_cls": torch.stack(mot_cls).sum() / num_fut if mot_cls else zero,
    }


def map_loss(out: VADOutputs, tgt: VADTargets, cfg: VADConfig) -> dict[str, Tensor]:
    cls_l, pts_l = [], []
    num_gt = max(1, sum(len(lab) for lab in tgt.map_labels))
    for b in range(out.map_logits.shape[0]):
        logits, pts = out.map_logits[b], out.map_points[b]  # [V, K], [V, P, 2]
        gt = normalize_points(tgt.map_vectors[b], out.pc_range)  # [M, P, 2]
        orderings, valid = map_permutations(gt)
        with torch.no_grad():
            pts_cost, _ = map_points_cost(pts, orderings, valid)
            cost = cfg.w_map_cls * focal_cost(logits, tgt.map_labels[b]) + cfg.w_map_pts * pts_cost
        rows, cols = hungarian(cost)
        cls_target = _one_hot(logits.shape[0], logits.shape[1], rows, tgt.map_labels[b][cols], logits)
        cls_l.append(sigmoid_focal_loss(logits, cls_target))
        if len(rows):
            # Re-evaluate the matched pairs with gradients, under their best ordering.
            diff = (pts[rows][:, None] - orderings[cols]).abs().mean((-1, -2))  # [n, S]
            pts_l.append(diff.masked_fill(~valid[cols], float("inf")).min(-1).values.sum())
    zero = out.map_logits.sum() * 0
    return {
        "map_cls": torch.stack(cls_l).sum() / num_gt,
        "map_pts": torch.stack(pts_l).sum() / num_gt if pts_l else zero,
    }


def point_segment_distance(points: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """points [T, 2], segments [S, 2, 2] -> distances [T, S] and unit segment directions [S, 2]."""
    a, b = segments[:, 0], segments[:, 1]
    ab = b - a
    length2 = (ab * ab).sum(-1).clamp(min=1e-9)
    t = (((points[:, None] - a[None]) * ab[None]).sum(-1) / length2).clamp(0, 1)  # [T, S]
    nearest = a[None] + t[..., None] * ab[None]
    return (points[:, None] - nearest).norm(dim=-1), ab / length2.sqrt()[:, None]


def _segments(vectors: Tensor) -> Tensor:
    """[M, P, 2] polylines -> [M * (P - 1), 2, 2] segments."""
    return torch.stack([vectors[:, :-1], vectors[:, 1:]], 2).reshape(-1, 2, 2)


def collision_loss(
    plan: Tensor, mask: Tensor, boxes: Tensor, fut: Tensor, fut_mask: Tensor, dist: float
) -> Tensor:
    """One sample: plan [T, 2], ego mask [T]; GT agents' centres from boxes [N, 9] moved along fut [N, T, 2]
    (mask [N, T]). Penalises, per step, how far the nearest agent lies inside `dist`."""
    if len(boxes) == 0:
        return plan.sum() * 0
    pos = boxes[:, None, :2] + fut  # [N, T, 2]
    d = (plan[None] - pos).norm(dim=-1).masked_fill(fut_mask <= 0, float("inf"))  # [N, T]
    nearest = d.min(0).values  # [T]
    pen = F.relu(dist - nearest).nan_to_num(0.0, posinf=0.0)
    return (pen * mask).sum() / mask.sum().clamp(min=1)


def boundary_loss(plan: Tensor, mask: Tensor, vectors: Tensor, labels: Tensor, margin: float) -> Tensor:
    """One sample: penalises planned points nearer than `margin` to any GT boundary vector."""
    bound = vectors[labels == BOUNDARY]
    if len(bound) == 0:
        return plan.sum() * 0
    d, _ = point_segment_distance(plan, _segments(bound))
    pen = F.relu(margin - d.min(-1).values)
    return (pen * mask).sum() / mask.sum().clamp(min=1)


def direction_loss(plan: Tensor, mask: Tensor, vectors: Tensor, labels: Tensor, dist: float) -> Tensor:
    """One sample: 1 - |cos| of the angle between each planned step's heading and the nearest lane divider
    (dividers have no direction), where one lies within `dist`."""
    div = vectors[labels == DIVIDER]
    if len(div) == 0:
        return plan.sum() * 0
    heading = plan - torch.cat([plan.new_zeros(1, 2), plan[:-1]])  # [T, 2]
    d, dirs = point_segment_distance(plan, _segments(div))
    nearest_d, nearest = d.min(-1)
    norm = heading.norm(dim=-1)
    cos = (heading * dirs[nearest]).sum(-1) / norm.clamp(min=1e-6)
    use = (
        mask * (nearest_d < dist).to(mask.dtype) * (norm > 0.1).to(mask.dtype)
    )  # a standing ego has no heading
    return ((1 - cos.abs()) * use).sum() / use.sum().clamp(min=1)


def planning_loss(out: VADOutputs, tgt: VADTargets, command: Tensor, cfg: VADConfig) -> dict[str, Tensor]:
    plan = out.plan_for(command)  # [B, T, 2]
    mask = tgt.ego_fut_mask  # [B, T]
    reg = ((plan - tgt.ego_fut_traj).abs().sum(-1) * mask).sum() / (mask.sum() * 2).clamp(min=1)
    col, bound, dirl = [], [], []
    for b in range(plan.shape[0]):
        col.append(
            collision_loss(
                plan[b], mask[b], tgt.boxes[b], tgt.agent_fut_traj[b], tgt.agent_fut_mask[b], cfg.col_distance
            )
        )
        bound.append(boundary_loss(plan[b], mask[b], tgt.map_vectors[b], tgt.map_labels[b], cfg.bound_margin))
        dirl.append(direction_loss(plan[b], mask[b], tgt.map_vectors[b], tgt.map_labels[b], cfg.dir_distance))
    return {
        "plan_reg": reg,
        "plan_col": torch.stack(col).mean(),
        "plan_bound": torch.stack(bound).mean(),
        "plan_dir": torch.stack(dirl).mean(),
    }


LOSS_WEIGHTS = {
    "det_cls": "w_cls",
    "det_box": "w_box",
    "motion_reg": "w_motion_reg",
    "motion_cls": "w_motion_cls",
    "map_cls": "w_map_cls",
    "map_pts": "w_map_pts",
    "plan_reg": "w_plan_reg",
    "plan_col": "w_plan_col",
    "plan_bound": "w_plan_bound",
    "plan_dir": "w_plan_dir",
}


def vad_loss(out: VADOutputs, tgt: VADTargets, command: Tensor, cfg: VADConfig) -> dict[str, Tensor]:
    """Every named loss (unweighted) and "total" (the config's weighted sum)."""
    losses = {
        **detection_and_motion_loss(out, tgt, cfg),
        **map_loss(out, tgt, cfg),
        **planning_loss(out, tgt, command, cfg),
    }
    losses["total"] = sum(getattr(cfg, LOSS_WEIGHTS[k]) * v for k, v in losses.items())
    return losses
