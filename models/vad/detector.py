"""VAD (Vectorized Scene Representation for Efficient Autonomous Driving), the whole detector, with the
module tree of the released checkpoints (`img_backbone`, `img_neck`, `pts_bbox_head`).

    images [B, N, 3, H, W] --ResNet + FPN--> levels [B, N, C, h, w]
    BEV queries --temporal self-attn (previous BEV) + spatial cross-attn (images)--> BEV [HW, B, C]
    BEV --detection / map decoders--> boxes, map vectors --motion head--> agent futures
    ego query --ego-agent, ego-map attention--> plan [B, 3 commands, 6 steps, 2]

Time: the previous frame's BEV enters the temporal self-attention, moved by the ego motion between the
two frames (the CAN-bus deltas). In training it comes from a queue of earlier frames computed without
gradient (`forward_train`); at test it is carried from frame to frame through a scene (`TemporalState`)
and dropped at a scene start, as the official `forward_test` does.

NetRoller plugs in through a `BevShift` (`perception_transformer.BevShift`): `shift.query` on the BEV
queries before the encoder (Query Shift) and `shift.feature` on its output (Feature Shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from netroller.models.vad.config import VADConfig
from netroller.models.vad.fpn import build_neck
from netroller.models.vad.grid_mask import GridMask
from netroller.models.vad.image_encoder import extract_img_feat
from netroller.models.vad.outputs import VADOutputs
from netroller.models.vad.perception_transformer import BevShift
from netroller.models.vad.resnet import build_backbone
from netroller.models.vad.vad_head import VADHead

# CAN-bus entries that hold the ego pose and are turned into frame-to-frame changes: x, y, z and the yaw
# in degrees (the last entry). Entry -2 keeps the absolute yaw in radians: the BEV shift reads it.
CAN_BUS_POS = slice(0, 3)
CAN_BUS_YAW_DEG = -1


@dataclass
class CameraFrame:
    """One frame as the cameras and the CAN bus give it (inputs only, no annotation)."""

    images: Tensor  # [B, N, 3, H, W] normalised, scaled and padded to a multiple of 32
    lidar2img: Tensor  # [B, N, 4, 4] lidar frame -> pixels of the scaled images
    can_bus: Tensor  # [B, 18] absolute: ego position, rotation, ..., yaw rad, yaw deg (data.index)

    def to(self, device: torch.device | str) -> CameraFrame:
        return CameraFrame(self.images.to(device), self.lidar2img.to(device), self.can_bus.to(device))

    @property
    def img_shape(self) -> tuple[int, int]:
        """(H, W) of the padded images: what the projections are normalised by."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def can_bus_delta(can_bus: Tensor, previous: Tensor | None) -> Tensor:
    """`can_bus` with its position and yaw in degrees made relative to `previous` (zero without one), as
    the official dataset's queue and `forward_test` feed them."""
    out = can_bus.clone()
    if previous is None:
        out[:, CAN_BUS_POS] = 0
        out[:, CAN_BUS_YAW_DEG] = 0
    else:
        out[:, CAN_BUS_POS] -= previous[:, CAN_BUS_POS]
        out[:, CAN_BUS_YAW_DEG] -= previous[:, CAN_BUS_YAW_DEG]
    return out


@dataclass
class TemporalState:
    """What test-time inference carries from one frame to the next of a scene."""

    scene_token: str
    can_bus: Tensor  # [1, 18] the previous frame's absolute CAN bus
    bev: Tensor  # [HW, 1, C] the previous frame's BEV features


class VAD(nn.Module):
    def __init__(self, cfg: VADConfig):
        super().__init__()
        self.cfg = cfg
        self.img_backbone = build_backbone(cfg)
        self.img_neck = build_neck(cfg)
        self.pts_bbox_head = VADHead(cfg)
        self.grid_mask = GridMask() if cfg.use_grid_mask else None
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation of the neck and the head. The official backbone starts from ImageNet
        weights, which cannot be had here: ours keeps PyTorch's defaults (mmdet's from-scratch start zeroes
        each block's last BatchNorm, which with BatchNorm frozen would switch the residual branches off)."""
        self.img_neck.init_weights()
        self.pts_bbox_head.init_weights()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The image backbone's parameters (trained at a tenth of the learning rate, as the official)."""
        return list(self.img_backbone.parameters())

    def image_features(self, images: Tensor) -> list[Tensor]:
        """[B, N, 3, H, W] -> FPN levels, each [B, N, C, h, w]."""
        rng = None
        if self.training and self.grid_mask is not None:
            # GridMask draws with numpy; seeding it from torch's generator puts its draws under the
            # run's seed and into the checkpointed RNG state (exact resume).
            rng = np.random.RandomState(int(torch.randint(0, 2**31 - 1, (1,))))
        return extract_img_feat(self.img_backbone, self.img_neck, self.grid_mask, images, self.training, rng)

    def bev(
        self, frame: CameraFrame, can_bus: Tensor, prev_bev: Tensor | None, shift: BevShift | None
    ) -> Tensor:
        """The BEV features alone ([B, HW, C]); `can_bus` holds the deltas to the previous frame."""
        feats = self.image_features(frame.images)
        return self.pts_bbox_head.bev_features(
            feats, frame.lidar2img, frame.img_shape, can_bus, prev_bev, shift=shift
        )

    def forward(
        self,
        frame: CameraFrame,
        can_bus: Tensor,
        prev_bev: Tensor | None = None,
        shift: BevShift | None = None,
    ) -> VADOutputs:
        """One frame through the whole model; `can_bus` holds the deltas to the frame `prev_bev` is of."""
        feats = self.image_features(frame.images)
        return self.pts_bbox_head(feats, frame.lidar2img, frame.img_shape, can_bus, prev_bev, shift=shift)

    def forward_train(
        self, frame: CameraFrame, history: list[CameraFrame], shift: BevShift | None = None
    ) -> VADOutputs:
        """The current frame with the previous BEV built from `history` (oldest first), without gradient
        and with the model in eval mode (no dropout, no GridMask), as the official `obtain_history_bev`."""
        prev_bev = None
        previous = None
        if history:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                for past in history:
                    prev_bev = self.bev(past, can_bus_delta(past.can_bus, previous), prev_bev, shift)
                    previous = past.can_bus
            self.train(was_training)
        return self(frame, can_bus_delta(frame.can_bus, previous), prev_bev, shift)

    @torch.no_grad()
    def forward_test(
        self,
        frame: CameraFrame,
        scene_token: str,
        state: TemporalState | None,
        shift: BevShift | None = None,
    ) -> tuple[VADOutputs, TemporalState]:
        """One frame of a scene played in order (batch 1, as the official test): the previous BEV is used
        when `state` is of the same scene, and dropped at a scene start."""
        if frame.images.shape[0] != 1:
            raise ValueError(
                f"forward_test plays one scene frame by frame: batch 1, got {frame.images.shape[0]}"
            )
        if state is not None and state.scene_token != scene_token:
            state = None
        previous = None if state is None else state.can_bus
        prev_bev = None if state is None else state.bev
        out = self(frame, can_bus_delta(frame.can_bus, previous), prev_bev, shift)
        return out, TemporalState(scene_token=scene_token, can_bus=frame.can_bus.clone(), bev=out.bev_embed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
