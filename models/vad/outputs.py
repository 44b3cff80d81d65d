"""VAD's raw head outputs and their decoding into per-sample numpy predictions (index conventions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from netroller.models.vad.batch import Batch
from netroller.models.vad.box_coder import decode_boxes, denormalize_points


@dataclass
class VADOutputs:
    """Raw tensors of every head (final decoder layer), as the losses read them."""

    det_logits: Tensor  # [B, A, num_det_classes] (sigmoid scores)
    det_boxes: Tensor  # [B, A, 10] encoded boxes (box_coder)
    motion_traj: Tensor  # [B, A, fut_modes, fut_steps, 2] metres, relative to each box centre, cumulative
    motion_logits: Tensor  # [B, A, fut_modes]
    map_logits: Tensor  # [B, V, num_map_classes] (sigmoid scores)
    map_points: Tensor  # [B, V, P, 2] normalized to [0, 1] over the x, y range
    plan: Tensor  # [B, ego_modes, fut_steps, 2] metres, cumulative, lidar frame; mode = command
    bev: Tensor  # [B, H*W, C] BEV features after the encoder (and after shift.feature)
    pc_range: tuple[float, ...]  # the range the normalized outputs refer to

    def plan_for(self, command: Tensor) -> Tensor:
        """[B, fut_steps, 2]: the plan mode each sample's command selects."""
        idx = command.long().view(-1, 1, 1, 1).expand(-1, 1, *self.plan.shape[2:])
        return self.plan.gather(1, idx).squeeze(1)


@dataclass
class VADPrediction:
    """Decoded predictions of one sample: numpy, lidar frame, `netroller.data.index` conventions."""

    sample_token: str
    boxes: np.ndarray  # (K, 9) x, y, z, w, l, h, yaw, vx, vy
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) into DETECTION_CLASSES
    agent_fut_traj: np.ndarray  # (K, modes, steps, 2) positions relative to the box centre
    agent_fut_scores: np.ndarray  # (K, modes) softmax over modes
    map_vectors: np.ndarray  # (M, P, 2) metres
    map_scores: np.ndarray  # (M,)
    map_labels: np.ndarray  # (M,) into MAP_CLASSES
    plan_traj: np.ndarray  # (steps, 2) positions, the mode of the GT command


@torch.no_grad()
def decode(outputs: VADOutputs, batch: Batch, *, max_boxes: int = 100) -> list[VADPrediction]:
    """Top-`max_boxes` (query, class) pairs by sigmoid score, as VAD's NMS-free coder; every map query
    with its best class, sorted by score; the plan of each sample's command."""
    det_scores = outputs.det_logits.sigmoid().float()  # [B, A, K]
    boxes = decode_boxes(outputs.det_boxes.float(), outputs.pc_range)
    fut_scores = outputs.motion_logits.float().softmax(-1)
    map_scores, map_labels = outputs.map_logits.float().sigmoid().max(-1)  # [B, V]
    map_pts = denormalize_points(outputs.map_points.float(), outputs.pc_range)
    plan = outputs.plan_for(batch.inputs.command.to(outputs.plan.device)).float()
    num_cls = det_scores.shape[-1]
    preds = []
    for b, token in enumerate(batch.sample_tokens):
        flat = det_scores[b].reshape(-1)
        k = min(max_boxes, flat.numel())
        scores, idx = flat.topk(k)
        query, label = idx // num_cls, idx % num_cls
        order = map_scores[b].argsort(descending=True)
        preds.append(
            VADPrediction(
                sample_token=token,
                boxes=boxes[b, query].cpu().numpy(),
                scores=scores.cpu().numpy(),
                labels=label.cpu().numpy().astype(np.int64),
                agent_fut_traj=outputs.motion_traj[b, query].float().cpu().numpy(),
                agent_fut_scores=fut_scores[b, query].cpu().numpy(),
                map_vectors=map_pts[b, order].cpu().numpy(),
                map_scores=map_scores[b, order].cpu().numpy(),
                map_labels=map_labels[b, order].cpu().numpy().astype(np.int64),
                plan_traj=plan[b].cpu().numpy(),
            )
        )
    return preds
