"""What VAD's head returns: every decoder layer's raw predictions, in the official tensors' layouts, as the
losses and the NMS-free decoding read them.

Box code (`code_size` 10), as the official regression branch: cx, cy, log w, log l, cz, log h, sin yaw,
cos yaw, vx, vy, with cx, cy, cz already turned into metres of the lidar frame. Map boxes and points are
normalised to [0, 1] over the x, y range (`pc_range`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class VADOutputs:
    """Raw outputs of one forward; L = decoder layers, A = agent queries, V = map vectors, P = points."""

    bev_embed: Tensor  # [bev_h*bev_w, B, C] BEV features after the encoder (and after a Feature Shift)
    all_cls_scores: Tensor  # [L_det, B, A, num_classes] logits (sigmoid scores)
    all_bbox_preds: Tensor  # [L_det, B, A, 10] box code above
    all_traj_preds: Tensor  # [L_det, B, A, fut_mode, fut_ts*2] per-step offsets (x, y interleaved); every
    #                         layer holds the one motion prediction, repeated as the official head does
    all_traj_cls_scores: Tensor  # [L_det, B, A, fut_mode] logits
    map_all_cls_scores: Tensor  # [L_map, B, V, map_num_classes] logits
    map_all_bbox_preds: Tensor  # [L_map, B, V, 4] normalised cx, cy, w, h of each vector's extent
    map_all_pts_preds: Tensor  # [L_map, B, V, P, 2] normalised x, y
    ego_fut_preds: Tensor  # [B, ego_fut_mode, fut_ts, 2] per-step offsets in metres, one mode per command
