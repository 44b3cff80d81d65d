"""VAD's training losses as one pure function of (outputs, targets, config): every term of the official
`VADHead.loss()`, each returned as a weighted sum and the count it is divided by.

Why sums and counts: the official divides each term by a count over the batch (matched GT, or elements of a
mean) that it averages over the processes (`sync_cls_avg_factor=True`, `reduce_mean`). Here a trainer with
several workers all-reduces the counts only and each worker divides its own sum by the global count, once,
with `LossTerm.divided_by` (`netroller.stages.batching.global_loss`): the shares and their gradients add up
to the one-process loss. On one process `LossTerm.value` (total / count) is the official value.

Terms (names as the official dict; `d{i}.` for the auxiliary decoder layers 0 .. L-2, none for the last):
- `loss_cls`, `loss_bbox` for every detection layer; `loss_traj`, `loss_traj_cls` for the last one only
  (every layer carries the same motion prediction and the official reports the last layer's).
- `loss_map_cls`, `loss_map_pts`, `loss_map_dir` for every map layer. The official `loss_map_bbox` and
  `loss_map_iou` (and the detection GIoU) have weight 0 in the configs and are omitted.
- `loss_plan_reg`, `loss_plan_bound`, `loss_plan_col`, `loss_plan_dir`: planning, with its constraints
  computed on the *predicted* agents (best mode of their futures) and map of the last layers, with gradients
  into them, as the official.

Normalisers (bg_cls_weight is 0 for the sigmoid focal losses, so the classification factor is the positive
count too): detection and map terms divide by the matched GT count of their layer, clamped to >= 1; the
planning L1 and the three constraints are means over all their elements (B x modes x T x 2, B x T,
B x T x 2, B x T). With several workers the official clamps the *mean* count per worker to >= 1, here the
summed count is clamped: they differ only for a batch with fewer matches than workers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from netroller.models.vad.assigners import FOCAL_ALPHA, FOCAL_GAMMA, assign_boxes, assign_map
from netroller.models.vad.coders import denormalize_points, encode_boxes, normalize_points
from netroller.models.vad.config import VADConfig
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.targets import VADTargets

# Box-code weights (the official default `code_weights`): velocities count 0.2.
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
# Map classes the planning constraints read.
DIVIDER, BOUNDARY = 0, 2
# The planning constraints' fixed parameters (the official loss classes' defaults the configs keep).
PLAN_MAP_THRESH = 0.5  # map score below which a predicted element is ignored
PLAN_AGENT_THRESH = 0.5  # agent score below which a predicted agent is ignored
PLAN_VEHICLE_CLASSES = 5  # classes 0..4 (car .. trailer) are vehicles for the collision constraint
PLAN_COL_X, PLAN_COL_Y = 1.5, 3.0  # metres: lateral / longitudinal safety margins to an agent
PLAN_COL_DIS = 3.0  # metres: agents farther than this from the ego at a step are ignored
PLAN_DIR_DIS = 2.0  # metres: the direction constraint needs a divider point this close
PLAN_DIR_STATIC = 1.0  # metres: a plan moving less than this (first to last step) has no heading
FAR = 1e6  # where the official moves ignored agents and map elements


@dataclass
class LossTerm:
    """One loss term: `total` is loss_weight x the summed elementwise loss, `count` its normaliser."""

    total: Tensor  # scalar, carries the gradient
    count: Tensor  # scalar float, no gradient

    def divided_by(self, count: Tensor | float) -> Tensor:
        """total / count, the count clamped to >= 1: the one normalisation rule, for this worker's count or
        the count summed over every worker."""
        return self.total / torch.as_tensor(count, dtype=self.total.dtype, device=self.total.device).clamp(
            min=1
        )

    @property
    def value(self) -> Tensor:
        """The term as the official reports it (on one process)."""
        return self.divided_by(self.count)


def loss_sum(terms: dict[str, LossTerm]) -> Tensor:
    """The training loss: the sum of every term's value (the weights are already in the terms)."""
    return torch.stack([t.value for t in terms.values()]).sum()


def _term(total: Tensor, count: float | Tensor, like: Tensor) -> LossTerm:
    # The official passes every term through nan_to_num.
    return LossTerm(torch.nan_to_num(total), torch.as_tensor(count, dtype=torch.float32, device=like.device))


def focal_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed sigmoid focal loss of [N, K] logits against [N] labels in 0..K (K = background)."""
    k = logits.shape[-1]
    target = F.one_hot(labels, k + 1)[:, :k].type_as(logits)
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    weight = (FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)) * pt.pow(FOCAL_GAMMA)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()


def best_modes(trajs: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """The mode whose end point is nearest the GT's: trajs [n, M, T, 2], gt [n, T, 2] offsets, mask [n, T]
    -> [n]. Distances are of the summed offsets at the last step, 0 where that step is masked (mode 0
    then), as the official `get_best_fut_preds` (whose NaN clean-up multiplies NaN by 0, a no-op: a NaN
    distance stays and wins the argmin, here too)."""
    dist = torch.linalg.norm(gt.cumsum(-2)[:, None] - trajs.cumsum(-2), dim=-1) * mask[:, None]  # [n, M, T]
    return dist[..., -1].argmin(-1)


def _detection_layer(
    cls_logits: Tensor,  # [B, A, K]
    box_codes: Tensor,  # [B, A, 10]
    trajs: Tensor,  # [B, A, M, T*2]
    traj_logits: Tensor,  # [B, A, M]
    tgt: VADTargets,
    cfg: VADConfig,
    with_motion: bool,
) -> dict[str, LossTerm]:
    b, a, k = cls_logits.shape
    m = traj_logits.shape[-1]
    trajs = trajs.reshape(b, a, m, cfg.fut_ts, 2)
    code_w = box_codes.new_tensor(CODE_WEIGHTS)
    labels = torch.full((b, a), k, dtype=torch.long, device=cls_logits.device)
    traj_labels = torch.full((b, a), m, dtype=torch.long, device=cls_logits.device)
    bbox_sum = traj_sum = cls_logits.new_zeros(())
    num_pos = 0
    for i in range(b):
        match = assign_boxes(
            cls_logits[i],
            box_codes[i],
            tgt.boxes[i],
            tgt.labels[i],
            cls_weight=cfg.w_cls,
            reg_weight=cfg.w_bbox,
        )
        rows, cols = match.pred_idx, match.gt_idx
        num_pos += len(match)
        labels[i, rows] = tgt.labels[i][cols]
        gt_codes = encode_boxes(tgt.boxes[i][cols])  # [n, 10]
        # A GT with a zero size codes to -inf; the official leaves such rows out of the regressions.
        finite = torch.isfinite(gt_codes).all(-1)
        bbox_sum = bbox_sum + ((box_codes[i, rows] - gt_codes).abs() * code_w)[finite].sum()
        if with_motion:
            gt_fut, gt_mask = tgt.agent_fut_trajs[i][cols], tgt.agent_fut_masks[i][cols]  # [n, T, 2], [n, T]
            mode = best_modes(trajs[i, rows], gt_fut, gt_mask)
            traj_labels[i, rows] = mode
            best = trajs[i, rows, mode]  # [n, T, 2]
            traj_sum = traj_sum + ((best - gt_fut).abs() * gt_mask[..., None])[finite].sum()
    terms = {
        "loss_cls": _term(
            cfg.w_cls * focal_loss_sum(cls_logits.reshape(b * a, k), labels.flatten()), num_pos, cls_logits
        ),
        "loss_bbox": _term(cfg.w_bbox * bbox_sum, num_pos, cls_logits),
    }
    if with_motion:
        traj_cls = focal_loss_sum(traj_logits.reshape(b * a, m), traj_labels.flatten())
        terms["loss_traj"] = _term(cfg.w_traj * traj_sum, num_pos, cls_logits)
        terms["loss_traj_cls"] = _term(cfg.w_traj_cls * traj_cls, num_pos, cls_logits)
    return terms


def _map_layer(
    cls_logits: Tensor,  # [B, V, K]
    pts: Tensor,  # [B, V, P, 2] normalised
    tgt: VADTargets,
    cfg: VADConfig,
) -> dict[str, LossTerm]:
    b, v, k = cls_logits.shape
    labels = torch.full((b, v), k, dtype=torch.long, device=cls_logits.device)
    pts_sum = dir_sum = cls_logits.new_zeros(())
    num_pos = 0
    for i in range(b):
        gt = tgt.map[i]
        match = assign_map(
            cls_logits[i],
            pts[i],
            gt.shifts,
            gt.labels,
            cfg.pc_range,
            cls_weight=cfg.w_map_cls,
            pts_weight=cfg.w_map_pts,
        )
        if not len(match):
            continue
        rows, cols = match.pred_idx, match.gt_idx
        num_pos += len(match)
        labels[i, rows] = gt.labels[cols]
        target = gt.shifts[cols, match.order_idx]  # [n, P, 2] metres, in the matched order
        pred = pts[i, rows]  # [n, P, 2]
        pts_sum = pts_sum + (pred - normalize_points(target, cfg.pc_range)).abs().sum()
        # Direction: cosine between consecutive-point vectors of the prediction (in metres) and the GT.
        pred_dir = denormalize_points(pred, cfg.pc_range).diff(dim=1).flatten(0, 1)  # [n*(P-1), 2]
        gt_dir = target.diff(dim=1).flatten(0, 1)
        ones = pred_dir.new_ones(pred_dir.shape[0])
        dir_sum = dir_sum + F.cosine_embedding_loss(pred_dir, gt_dir, ones, reduction="sum")
    focal = focal_loss_sum(cls_logits.reshape(b * v, k), labels.flatten())
    return {
        "loss_map_cls": _term(cfg.w_map_cls * focal, num_pos, cls_logits),
        "loss_map_pts": _term(cfg.w_map_pts * pts_sum, num_pos, cls_logits),
        "loss_map_dir": _term(cfg.w_map_dir * dir_sum, num_pos, cls_logits),
    }


def _with_prefix(terms: dict[str, LossTerm], layer: int, last: int) -> dict[str, LossTerm]:
    return terms if layer == last else {f"d{layer}.{name}": t for name, t in terms.items()}


def vad_losses(outputs: VADOutputs, targets: VADTargets, cfg: VADConfig) -> dict[str, LossTerm]:
    """Every official loss term of one batch, in the official dict's order (last layers, planning, then the
    auxiliary layers)."""
    # The official computes its losses in fp32 (`force_fp32`), whatever precision the head ran in.
    outputs = VADOutputs(**{f.name: getattr(outputs, f.name).float() for f in dataclasses.fields(outputs)})
    num_det, num_map = outputs.all_cls_scores.shape[0], outputs.map_all_cls_scores.shape[0]
    det = [
        _detection_layer(
            outputs.all_cls_scores[j],
            outputs.all_bbox_preds[j],
            outputs.all_traj_preds[j],
            outputs.all_traj_cls_scores[j],
            targets,
            cfg,
            with_motion=j == num_det - 1,
        )
        for j in range(num_det)
    ]
    maps = [
        _map_layer(outputs.map_all_cls_scores[j], outputs.map_all_pts_preds[j], targets, cfg)
        for j in range(num_map)
    ]
    terms = {**det[-1], **maps[-1], **planning_losses(outputs, targets, cfg)}
    for j in range(num_det - 1):
        terms.update(_with_prefix(det[j], j, num_det - 1))
    for j in range(num_map - 1):
        terms.update(_with_prefix(maps[j], j, num_map - 1))
    return terms


# ----------------------------------------------------------------------------------------------------------
# Planning


def _hinge(dist: Tensor, thresh: float) -> Tensor:
    """thresh - dist where dist <= thresh, else 0 (the official's masked assignment, so also its gradient)."""
    return torch.where(dist <= thresh, thresh - dist, torch.zeros_like(dist))


def _map_for_planning(pts: Tensor, scores: Tensor, cls: int, pc_range) -> Tensor:
    """[B, V, P, 2] normalised predicted points -> metres, with elements of another class or a score below
    PLAN_MAP_THRESH moved FAR away."""
    keep = scores[..., cls] >= PLAN_MAP_THRESH  # [B, V]
    pts = denormalize_points(pts, pc_range)
    return torch.where(keep[..., None, None], pts, torch.full_like(pts, FAR))


def _nearest_element(ego: Tensor, elems: Tensor) -> Tensor:
    """ego [B, T, 2], elems [B, V, P, 2] -> [B, T, P, 2] the element with the point nearest each step."""
    dist = torch.linalg.norm(ego[:, :, None, None] - elems[:, None], dim=-1).min(-1).values  # [B, T, V]
    idx = dist.argmin(-1)  # [B, T]
    return elems[torch.arange(elems.shape[0], device=elems.device)[:, None], idx]


def _segments_intersect(p0: Tensor, p1: Tensor, q0: Tensor, q1: Tensor) -> Tensor:
    """Whether segments p0-p1 and q0-q1 ([..., 2] each) cross; parallel ones never do (official test)."""
    dx1, dy1 = p1[..., 0] - p0[..., 0], p1[..., 1] - p0[..., 1]
    dx2, dy2 = q1[..., 0] - q0[..., 0], q1[..., 1] - q0[..., 1]
    det = dx1 * dy2 - dx2 * dy1
    ox, oy = q0[..., 0] - p0[..., 0], q0[..., 1] - p0[..., 1]
    t1 = (ox * dy2 - oy * dx2) / det
    t2 = (ox * dy1 - oy * dx1) / det
    return (t1 >= 0) & (t1 <= 1) & (t2 >= 0) & (t2 <= 1) & (det != 0)


def plan_bound_loss(ego: Tensor, bounds: Tensor, dis_thresh: float) -> Tensor:
    """[B, T] hinge on each planned point's distance to the nearest boundary point, zero from the first
    step whose ego segment crosses its nearest boundary on. ego [B, T, 2] offsets, bounds [B, V, P, 2]."""
    pos = ego.cumsum(-2)  # [B, T, 2]
    starts = torch.cat([pos.new_zeros(pos.shape[0], 1, 2), pos[:, :-1]], dim=1)
    nearest = _nearest_element(pos, bounds)  # [B, T, P, 2]
    crosses = _segments_intersect(
        starts[:, :, None], pos[:, :, None], nearest[:, :, :-1], nearest[:, :, 1:]
    ).any(-1)  # [B, T]
    after_cross = crosses.int().cumsum(-1) > 0
    dist = torch.linalg.norm(pos[:, :, None] - bounds.flatten(1, 2)[:, None], dim=-1).min(-1).values
    loss = _hinge(dist, dis_thresh)
    return torch.where(after_cross, torch.zeros_like(loss), loss)


def plan_collision_loss(ego: Tensor, agent_xy: Tensor, agent_futs: Tensor) -> Tensor:
    """[B, T, 2] hinges on the nearest agent's lateral and longitudinal distance at each step. ego [B, T, 2]
    offsets, agent_xy [B, A, 2] centres, agent_futs [B, A, T, 2] offsets (FAR for ignored agents)."""
    pos = ego.cumsum(-2)
    agents = agent_xy[:, :, None] + agent_futs.cumsum(-2)  # [B, A, T, 2]
    far = torch.linalg.norm(pos[:, None] - agents, dim=-1) > PLAN_COL_DIS  # [B, A, T]
    agents = torch.where(far[..., None], torch.full_like(agents, FAR), agents)
    gap = (pos[:, None] - agents).abs()  # [B, A, T, 2]
    x_gap = gap[..., 0].min(1).values  # [B, T]
    y_gap = gap[..., 1].min(1).values
    return torch.stack([_hinge(x_gap, PLAN_COL_X), _hinge(y_gap, PLAN_COL_Y)], dim=-1)


def plan_direction_loss(ego: Tensor, dividers: Tensor) -> Tensor:
    """[B, T] |heading difference| (folded into [-pi/2, pi/2]) between each planned step and the nearest
    divider's local direction; 0 without a divider point within PLAN_DIR_DIS or for a static plan."""
    p = dividers.shape[2]
    pos = ego.cumsum(-2)  # [B, T, 2]
    static = torch.linalg.norm(pos[:, -1] - pos[:, 0], dim=-1) < PLAN_DIR_STATIC  # [B]
    inst = _nearest_element(pos, dividers)  # [B, T, P, 2]
    near = torch.linalg.norm(pos[:, :, None] - inst, dim=-1).argmin(-1)  # [B, T]
    # The segment from the nearest point to the next one; at the last point, back to the one before.
    nxt = torch.where(near == p - 1, torch.full_like(near, p - 2), near + 1)
    a = inst.gather(2, near[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)  # [B, T, 2]
    c = inst.gather(2, nxt[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
    step = pos.diff(dim=1)
    yaw = torch.atan2(step[..., 1], step[..., 0])
    yaw = torch.cat([yaw, yaw[:, -1:]], dim=-1)  # the last step keeps the previous heading
    diff = yaw - torch.atan2(c[..., 1] - a[..., 1], c[..., 0] - a[..., 0])
    # The official's four sequential folds (not a modulo: a difference just above pi ends near 0).
    diff = torch.where(diff > math.pi, diff - math.pi, diff)
    diff = torch.where(diff > math.pi / 2, diff - math.pi, diff)
    diff = torch.where(diff < -math.pi, diff + math.pi, diff)
    diff = torch.where(diff < -math.pi / 2, diff + math.pi, diff)
    off = (torch.linalg.norm(a - pos, dim=-1) > PLAN_DIR_DIS) | static[:, None]
    return torch.where(off, torch.zeros_like(diff), diff).abs()


def planning_losses(outputs: VADOutputs, tgt: VADTargets, cfg: VADConfig) -> dict[str, LossTerm]:
    """The official `loss_planning` on the last layers' predictions."""
    preds = outputs.ego_fut_preds  # [B, modes, T, 2]
    b, modes, t, _ = preds.shape
    cmd = tgt.ego_fut_cmd.to(preds.dtype)  # [B, modes]
    mask = tgt.ego_fut_masks.to(preds.dtype)  # [B, T]
    weight = cmd[..., None, None] * mask[:, None, :, None]  # [B, modes, T, 1]
    reg = ((preds - tgt.ego_fut_trajs[:, None]).abs() * weight).sum()
    plan = preds[torch.arange(b, device=preds.device), tgt.ego_fut_cmd.argmax(-1)]  # [B, T, 2]

    map_pts = outputs.map_all_pts_preds[-1]
    map_scores = outputs.map_all_cls_scores[-1].sigmoid()
    bound = plan_bound_loss(
        plan, _map_for_planning(map_pts, map_scores, BOUNDARY, cfg.pc_range), cfg.plan_bound_dis_thresh
    )
    direction = plan_direction_loss(plan, _map_for_planning(map_pts, map_scores, DIVIDER, cfg.pc_range))

    # Agents: the best-scored mode of each predicted agent; low-score and non-vehicle agents moved FAR.
    a = outputs.all_bbox_preds.shape[2]
    futs = outputs.all_traj_preds[-1].reshape(b, a, cfg.fut_mode, t, 2)
    score, cls = outputs.all_cls_scores[-1].sigmoid().max(-1)  # [B, A]
    ignore = (score < PLAN_AGENT_THRESH) | (cls >= PLAN_VEHICLE_CLASSES)
    futs = torch.where(ignore[..., None, None, None], torch.full_like(futs, FAR), futs)
    best = outputs.all_traj_cls_scores[-1].sigmoid().argmax(-1)  # [B, A]
    futs = futs.gather(2, best[..., None, None, None].expand(-1, -1, 1, t, 2)).squeeze(2)  # [B, A, T, 2]
    col = plan_collision_loss(plan, outputs.all_bbox_preds[-1][..., :2], futs)

    return {
        "loss_plan_reg": _term(cfg.w_plan_reg * reg, b * modes * t * 2, preds),
        "loss_plan_bound": _term(cfg.w_plan_bound * (bound * mask).sum(), b * t, preds),
        "loss_plan_col": _term(cfg.w_plan_col * (col * mask[..., None]).sum(), b * t * 2, preds),
        "loss_plan_dir": _term(cfg.w_plan_dir * (direction * mask).sum(), b * t, preds),
    }
