"""VAD's perception transformer (`VADPerceptionTransformer`): the camera features and the learned BEV
queries go through the BEV encoder (with the previous BEV turned and shifted to the current ego pose by the
CAN-bus motion), then the agent and map queries read the BEV in their decoders.

NetRoller's two shift points sit where the NetRoller authors put theirs (RollNet's `VAD_transformer.py`
`get_bev_features`): Query Shift on the BEV queries right before the encoder (after the CAN-bus signal is
added), Feature Shift on the encoder's output. Their history frames (`obtain_history_bev`) run without the
shift, so callers pass `shift` for the current frame only.

Parameter names are the released checkpoints' relative to `pts_bbox_head.transformer`: `level_embeds`,
`cams_embeds`, `reference_points`, `map_reference_points`, `can_bus_mlp.{0,2,norm}`, `encoder`, `decoder`,
`map_decoder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from netroller.models.vad.bev_encoder import BEVFormerEncoder, build_bev_encoder
from netroller.models.vad.config import VADConfig
from netroller.models.vad.decoders import (
    CustomMSDeformableAttention,
    DetectionTransformerDecoder,
    MapDetectionTransformerDecoder,
    build_detection_decoder,
    build_map_decoder,
)
from netroller.models.vad.rotate import rotate_bev
from netroller.models.vad.spatial_cross_attention import MSDeformableAttention3D, SpatialCrossAttention
from netroller.models.vad.temporal_self_attention import TemporalSelfAttention

CAN_BUS_DIMS = 18
"""Length of the CAN-bus vector (VAD's converter: translation 3, rotation 4, acceleration 3, angular rate 3,
velocity 3, yaw in radians, yaw change in degrees)."""
NUM_FEATURE_LEVELS = 4
"""Rows of `level_embeds`: the official default, which both released configs keep (VAD-Tiny reads one)."""
ROTATE_CENTER = (100.0, 100.0)
"""Pixel (x, y) the previous BEV is turned about: the official default, kept by both released configs
(the centre of VAD-Base's 200x200 BEV; a corner of VAD-Tiny's 100x100 one)."""


class BevShift(Protocol):
    """How NetRoller shifts the BEV; both methods map [B, HW, C] to [B, HW, C]."""

    def query(self, bev_queries: Tensor) -> Tensor: ...

    def feature(self, bev: Tensor) -> Tensor: ...


def ego_shift(
    can_bus: Tensor, grid_length: tuple[float, float], bev_h: int, bev_w: int
) -> Tensor:  # [B, 2] (x, y)
    """How far the previous BEV's content moved in the current BEV, in fractions of the BEV's width and
    height: the ego translation (can_bus[:, 0:2], a delta) turned into the current heading (can_bus[:, -2],
    radians); `grid_length` = (metres per row, metres per column). Computed in float64, as the official
    NumPy code."""
    cb = can_bus.to(torch.float64)
    delta_x, delta_y = cb[:, 0], cb[:, 1]
    ego_angle = cb[:, -2] / math.pi * 180
    translation_length = torch.sqrt(delta_x**2 + delta_y**2)
    translation_angle = torch.atan2(delta_y, delta_x) / math.pi * 180
    bev_angle = ego_angle - translation_angle
    shift_y = translation_length * torch.cos(bev_angle / 180 * math.pi) / grid_length[0] / bev_h
    shift_x = translation_length * torch.sin(bev_angle / 180 * math.pi) / grid_length[1] / bev_w
    return torch.stack([shift_x, shift_y], -1)


class PerceptionTransformer(nn.Module):
    """BEV encoder plus the agent and map decoders, with the camera/level embeddings, the CAN-bus MLP and
    the decoders' initial reference points."""

    def __init__(
        self,
        encoder: BEVFormerEncoder,
        decoder: DetectionTransformerDecoder | None,
        map_decoder: MapDetectionTransformerDecoder | None,
        embed_dims: int,
        num_cams: int,
        num_feature_levels: int = NUM_FEATURE_LEVELS,
        rotate_center: tuple[float, float] = ROTATE_CENTER,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.map_decoder = map_decoder
        self.embed_dims = embed_dims
        self.num_cams = num_cams
        self.rotate_center = rotate_center
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, embed_dims))
        self.cams_embeds = nn.Parameter(torch.empty(num_cams, embed_dims))
        self.reference_points = nn.Linear(embed_dims, 3)
        self.map_reference_points = nn.Linear(embed_dims, 2)
        self.can_bus_mlp = nn.Sequential(
            nn.Linear(CAN_BUS_DIMS, embed_dims // 2),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dims // 2, embed_dims),
            nn.ReLU(inplace=True),
        )
        self.can_bus_mlp.add_module("norm", nn.LayerNorm(embed_dims))
        self.init_weights()

    def init_weights(self) -> None:
        """The official start: Xavier for every matrix, then each deformable attention's own start,
        normal camera and level embeddings, Xavier (zero bias) reference-point layers."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        deformable = (MSDeformableAttention3D, SpatialCrossAttention, TemporalSelfAttention)
        for m in self.modules():
            if isinstance(m, (*deformable, CustomMSDeformableAttention)):
                m.init_weights()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.cams_embeds)
        # The official code also calls its Xavier init on the whole CAN-bus MLP, where it does nothing (an
        # nn.Sequential has no weight), so those layers keep the generic Xavier weights and default biases.
        for m in (self.reference_points, self.map_reference_points):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def align_prev_bev(self, prev_bev: Tensor, can_bus: Tensor, bev_h: int, bev_w: int) -> Tensor:
        """The previous BEV [B, HW, C] turned by each sample's yaw change (can_bus[:, -1], degrees) about
        `rotate_center`, NEAREST (torchvision's `rotate`); a new tensor (the official code overwrote its input)."""
        turned = []
        for i in range(prev_bev.shape[0]):
            img = prev_bev[i].reshape(bev_h, bev_w, -1).permute(2, 0, 1)  # [HW, C] -> [C, H, W]
            img = rotate_bev(img, float(can_bus[i, -1]), self.rotate_center)
            turned.append(img.permute(1, 2, 0).reshape(bev_h * bev_w, -1))  # -> [HW, C]
        return torch.stack(turned)

    def get_bev_features(
        self,
        mlvl_feats: Sequence[Tensor],  # L x [B, N, C, h_l, w_l]
        bev_queries: Tensor,  # [HW, C] the learned BEV queries
        bev_h: int,
        bev_w: int,
        grid_length: tuple[float, float],  # (metres per BEV row, metres per BEV column)
        bev_pos: Tensor,  # [B, C, H, W]
        lidar2img: Tensor,  # [B, N, 4, 4] lidar -> padded-image pixels
        img_shape: tuple[int, int],  # (H, W) of the padded images
        can_bus: Tensor,  # [B, 18]; [:3] and [-1] are deltas to the previous frame (float64 for exactness)
        prev_bev: Tensor | None,  # [B, HW, C] the previous frame's BEV, or None at a scene start
        shift: BevShift | None = None,
    ) -> Tensor:  # [B, HW, C]
        """The BEV features of the current frame."""
        bs = mlvl_feats[0].shape[0]
        dtype = bev_queries.dtype
        queries = bev_queries.unsqueeze(0).expand(bs, -1, -1)  # [B, HW, C]
        pos = bev_pos.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, HW, C]
        motion = ego_shift(can_bus, grid_length, bev_h, bev_w).to(dtype)  # [B, 2]
        if prev_bev is not None:
            prev_bev = self.align_prev_bev(prev_bev, can_bus, bev_h, bev_w)

        queries = queries + self.can_bus_mlp(can_bus.to(dtype))[:, None, :]

        feats, shapes = [], []
        for lvl, feat in enumerate(mlvl_feats):
            h, w = feat.shape[-2:]
            feat = feat.flatten(3).transpose(2, 3)  # [B, N, C, h, w] -> [B, N, hw, C]
            feat = feat + self.cams_embeds[None, :, None, :].to(feat.dtype)
            feat = feat + self.level_embeds[None, None, lvl : lvl + 1, :].to(feat.dtype)
            feats.append(feat)
            shapes.append((h, w))
        value = torch.cat(feats, 2)  # [B, N, sum hw, C]
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=value.device)  # [L, 2]

        if shift is not None:
            queries = shift.query(queries)  # NetRoller's Query Shift
        bev = self.encoder(
            queries, value, spatial_shapes, bev_h, bev_w, pos, lidar2img, img_shape, motion, prev_bev
        )
        if shift is not None:
            bev = shift.feature(bev)  # NetRoller's Feature Shift
        return bev

    def forward(
        self,
        mlvl_feats: Sequence[Tensor],  # L x [B, N, C, h_l, w_l]
        bev_queries: Tensor,  # [HW, C]
        object_query_embed: Tensor,  # [Nq, 2C] (position, content)
        map_query_embed: Tensor,  # [Nm, 2C] (position, content)
        bev_h: int,
        bev_w: int,
        grid_length: tuple[float, float],
        bev_pos: Tensor,  # [B, C, H, W]
        lidar2img: Tensor,  # [B, N, 4, 4]
        img_shape: tuple[int, int],  # (H, W) padded
        can_bus: Tensor,  # [B, 18]
        reg_branches: Sequence[nn.Module] | None = None,
        map_reg_branches: Sequence[nn.Module] | None = None,
        prev_bev: Tensor | None = None,  # [B, HW, C]
        shift: BevShift | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The official outputs, in its layouts: bev_embed [HW, B, C], agent states [L, Nq, B, C], initial
        agent references [B, Nq, 3], per-layer references [L, B, Nq, 3], map states [L, Nm, B, C], initial
        map references [B, Nm, 2], per-layer map references [L, B, Nm, 2]."""
        bev = self.get_bev_features(
            mlvl_feats, bev_queries, bev_h, bev_w, grid_length, bev_pos, lidar2img, img_shape, can_bus,
            prev_bev, shift,
        )  # fmt: skip
        bs = bev.shape[0]
        bev_embed = bev.permute(1, 0, 2)  # [HW, B, C]
        spatial_shapes = torch.tensor([[bev_h, bev_w]], device=bev.device)
        level_start_index = torch.tensor([0], device=bev.device)

        query_pos, query = torch.split(object_query_embed, self.embed_dims, dim=1)  # [Nq, C] each
        query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)  # [B, Nq, C]
        query = query.unsqueeze(0).expand(bs, -1, -1)
        init_reference = self.reference_points(query_pos).sigmoid()  # [B, Nq, 3]
        map_query_pos, map_query = torch.split(map_query_embed, self.embed_dims, dim=1)
        map_query_pos = map_query_pos.unsqueeze(0).expand(bs, -1, -1)  # [B, Nm, C]
        map_query = map_query.unsqueeze(0).expand(bs, -1, -1)
        map_init_reference = self.map_reference_points(map_query_pos).sigmoid()  # [B, Nm, 2]

        # The decoders are sequence-first: [Nq, B, C].
        query, query_pos = query.permute(1, 0, 2), query_pos.permute(1, 0, 2)
        map_query, map_query_pos = map_query.permute(1, 0, 2), map_query_pos.permute(1, 0, 2)
        hs, inter_references = _decode(
            self.decoder,
            query,
            query_pos,
            init_reference,
            reg_branches,
            bev_embed,
            spatial_shapes,
            level_start_index,
        )
        map_hs, map_inter_references = _decode(
            self.map_decoder, map_query, map_query_pos, map_init_reference, map_reg_branches, bev_embed,
            spatial_shapes, level_start_index,
        )  # fmt: skip
        return (
            bev_embed, hs, init_reference, inter_references, map_hs, map_init_reference, map_inter_references,
        )  # fmt: skip


def _decode(
    decoder: nn.Module | None,
    query: Tensor,  # [Nq, B, C]
    query_pos: Tensor,  # [Nq, B, C]
    reference: Tensor,  # [B, Nq, 2 or 3] in [0, 1]
    reg_branches: nn.ModuleList | None,
    bev_embed: Tensor,  # [HW, B, C]
    spatial_shapes: Tensor,
    level_start_index: Tensor,
) -> tuple[Tensor, Tensor]:
    """(states [L, Nq, B, C], references [L, B, Nq, .]) of one decoder over the BEV; without a decoder, the
    queries and their first references as a single layer."""
    if decoder is None:
        return query.unsqueeze(0), reference.unsqueeze(0)
    return decoder(
        query=query,
        key=None,
        value=bev_embed,
        query_pos=query_pos,
        reference_points=reference,
        reg_branches=reg_branches,
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
    )


def build_perception_transformer(cfg: VADConfig) -> PerceptionTransformer:
    """The perception transformer of a VAD configuration (`pts_bbox_head.transformer`)."""
    return PerceptionTransformer(
        build_bev_encoder(cfg),
        build_detection_decoder(cfg),
        build_map_decoder(cfg),
        cfg.embed_dims,
        cfg.num_cams,
        rotate_center=cfg.rotate_center,
    )
