"""The compact VAD (Vectorized Scene Representation for Efficient Autonomous Driving) in plain PyTorch.

    images [B, 6, 3, H, W] --ImageEncoder--> [B, 6, C, h, w]
    BEV queries [B, HW, C] --shift.query--> --BEVEncoder (self-attn + spatial cross-attn)--> --shift.feature--> bev
    bev --AgentHead--> detection + motion;  bev --MapHead--> vectorized map
    ego query --ego-agent, ego-map attention--> planning MLP [B, 3 commands, 6 steps, 2]

NetRoller plugs in at exactly two places, through a `BevShift` passed to `forward`:
- `shift.query(bev_queries)` on the learned BEV queries before the encoder (the paper's Query Shift);
- `shift.feature(bev)` on the encoder output, before every head (Feature Shift).
With `shift=None` both are the identity and this is the plain VAD.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from netroller.models.vad.agent_head import AgentHead
from netroller.models.vad.backbone import ImageEncoder
from netroller.models.vad.batch import VADInputs
from netroller.models.vad.bev_encoder import BEVEncoder
from netroller.models.vad.config import VADConfig
from netroller.models.vad.map_head import MapHead
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.plan_head import PlanningHead


class BevShift(Protocol):
    """How NetRoller shifts the BEV; both methods map [B, HW, C] to [B, HW, C]."""

    def query(self, bev_queries: Tensor) -> Tensor: ...

    def feature(self, bev: Tensor) -> Tensor: ...


class VAD(nn.Module):
    def __init__(self, cfg: VADConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.bev_encoder = BEVEncoder(cfg)
        self.agent_head = AgentHead(cfg)
        self.map_head = MapHead(cfg)
        self.planning_head = PlanningHead(cfg)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The image backbone's parameters (trained at a lower learning rate)."""
        return list(self.image_encoder.backbone.parameters())

    def forward(self, inputs: VADInputs, shift: BevShift | None = None) -> VADOutputs:
        cfg = self.cfg
        b = inputs.batch_size
        img_feats = self.image_encoder(inputs.images)  # [B, 6, C, h, w]
        bev = self.bev_encoder.queries(b)  # [B, HW, C]
        if shift is not None:
            bev = shift.query(bev)
        bev = self.bev_encoder(bev, img_feats, inputs.lidar_to_image)  # [B, HW, C]
        if shift is not None:
            bev = shift.feature(bev)
        bev_map = bev.transpose(1, 2).reshape(b, cfg.embed_dims, cfg.bev_h, cfg.bev_w)  # [B, C, H, W]

        map_feats, map_logits, map_points = self.map_head(bev_map)  # [B, V, C], [B, V, K], [B, V, P, 2]
        map_xy = map_points.mean(2)  # [B, V, 2] normalized instance centres
        agents, det_logits, det_boxes = self.agent_head.detect(bev_map)  # [B, A, C], [B, A, K], [B, A, 10]
        motion_feats, motion_traj, motion_logits = self.agent_head.motion(
            agents, det_boxes, map_feats, map_xy
        )
        # Ego-agent keys carry each agent's motion (max over its modes), as VAD's ego-agent interaction does.
        agent_keys = agents + motion_feats.max(2).values
        plan = self.planning_head(inputs.ego_velocity, agent_keys, det_boxes[..., :2], map_feats, map_xy)
        return VADOutputs(
            det_logits=det_logits,
            det_boxes=det_boxes,
            motion_traj=motion_traj,
            motion_logits=motion_logits,
            map_logits=map_logits,
            map_points=map_points,
            plan=plan,
            bev=bev,
            pc_range=tuple(cfg.pc_range),
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
