"""VAD's head, assembled from its two parts with the released checkpoints' flat names
(`pts_bbox_head.transformer.*`, `pts_bbox_head.cls_branches.*`, `pts_bbox_head.motion_decoder.*`, ...):

    PerceptionHead       BEV encoder, detection and map decoders, per-layer boxes and map vectors
    MotionPlanningHead   agent futures (agent-agent, agent-map attention) and the ego plan

Each part registers its modules on the head itself (cooperative `__init__`, see `layer.HeadPart`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from netroller.models.vad.config import VADConfig
from netroller.models.vad.motion_planning_head import MotionPlanningHead
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.perception_head import PerceptionHead
from netroller.models.vad.perception_transformer import BevShift


class VADHead(PerceptionHead, MotionPlanningHead):
    def __init__(self, cfg: VADConfig):
        super().__init__(cfg)

    def init_weights(self) -> None:
        PerceptionHead.init_weights(self)
        MotionPlanningHead.init_weights(self)

    def forward(
        self,
        mlvl_feats: Sequence[Tensor],  # levels x [B, N, C, h, w]
        lidar2img: Tensor,  # [B, N, 4, 4] lidar frame -> padded-image pixels
        img_shape: tuple[int, int],  # (H, W) of the padded images
        can_bus: Tensor,  # [B, 18], position and yaw in degrees as deltas to the previous frame
        prev_bev: Tensor | None,  # the previous frame's BEV; None without one
        shift: BevShift | None = None,
    ) -> VADOutputs:
        p = self.perceive(mlvl_feats, lidar2img, img_shape, can_bus, prev_bev, shift=shift)
        map_logits = p.map_outputs_classes[-1]
        motion = self.predict_motion(
            p.agent_feats, p.outputs_coords_bev, p.map_feats, map_logits, p.map_outputs_coords_bev
        )
        plan = self.plan(
            motion.mode_feats,
            p.outputs_classes[-1],
            p.outputs_coords_bev,
            p.map_feats,
            map_logits,
            p.map_outputs_coords_bev,
        )
        layers = p.outputs_coords.shape[0]
        # The one motion prediction stands for every decoder layer, as the official outputs have it.
        return VADOutputs(
            bev_embed=p.bev_embed,
            all_cls_scores=p.outputs_classes,
            all_bbox_preds=p.outputs_coords,
            all_traj_preds=motion.traj_preds.unsqueeze(0).expand(layers, *motion.traj_preds.shape),
            all_traj_cls_scores=motion.traj_cls_scores.unsqueeze(0).expand(
                layers, *motion.traj_cls_scores.shape
            ),
            map_all_cls_scores=p.map_outputs_classes,
            map_all_bbox_preds=p.map_outputs_coords,
            map_all_pts_preds=p.map_outputs_pts_coords,
            ego_fut_preds=plan,
        )
