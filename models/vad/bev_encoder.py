"""VAD's BEV encoder (BEVFormer's): layers of temporal self-attention (the BEV queries read the previous BEV
and themselves), spatial cross-attention (they read the cameras around their pillars' projections) and a
feed-forward block, each followed by a LayerNorm.

Parameter names are the released checkpoints' relative to `pts_bbox_head.transformer.encoder`:
`layers.<i>.attentions.0` (temporal), `layers.<i>.attentions.1` (spatial), `layers.<i>.ffns.0.layers`,
`layers.<i>.norms.<k>`. Tensors are batch-first here, `[B, HW, C]`, BEV cells row-major (row = y).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig
from netroller.models.vad.layer import FFN
from netroller.models.vad.spatial_cross_attention import SpatialCrossAttention
from netroller.models.vad.temporal_self_attention import NUM_BEV_QUEUE, TemporalSelfAttention

# A pillar point counts as in front of a camera when its depth exceeds this (and the division by depth is
# clamped to it), as the official point sampling.
DEPTH_EPS = 1e-5


@dataclass(frozen=True, kw_only=True)
class BEVEncoderConfig:
    """Sizes of the BEV encoder."""

    num_layers: int
    """Encoder layers."""
    embed_dims: int
    """C: width of the BEV queries and of the camera features."""
    num_heads: int
    """Heads of both deformable attentions."""
    ffn_dims: int
    """Hidden width of the feed-forward blocks."""
    dropout: float
    """Dropout on both attentions' outputs and in the feed-forward blocks."""
    num_cams: int
    """Cameras."""
    num_levels: int
    """Camera feature levels the spatial cross-attention reads."""
    pc_range: tuple[float, float, float, float, float, float]
    """x_min, y_min, z_min, x_max, y_max, z_max (metres) the BEV and its pillars span."""
    pillar_points: int
    """Reference heights per pillar (spread evenly over z)."""
    sca_points: int
    """Sampling points per head and level of the spatial cross-attention; divisible by pillar_points."""
    tsa_points: int
    """Sampling points per head and frame of the temporal self-attention."""

    def __post_init__(self) -> None:
        positive = (
            "num_layers", "embed_dims", "num_heads", "ffn_dims", "num_cams", "num_levels", "pillar_points",
            "sca_points", "tsa_points",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BEVEncoderConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dims % self.num_heads:
            raise ConfigError(
                f"BEVEncoderConfig.embed_dims ({self.embed_dims}) must divide by num_heads ({self.num_heads})"
            )
        if self.sca_points % self.pillar_points:
            raise ConfigError(
                f"BEVEncoderConfig.sca_points ({self.sca_points}) must divide by pillar_points "
                f"({self.pillar_points})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BEVEncoderConfig.dropout must be in [0, 1), got {self.dropout!r}")


def bev_encoder_config(cfg: VADConfig) -> BEVEncoderConfig:
    """The encoder of a VAD configuration."""
    return BEVEncoderConfig(
        num_layers=cfg.encoder_layers,
        embed_dims=cfg.embed_dims,
        num_heads=cfg.num_heads,
        ffn_dims=cfg.ffn_dims,
        dropout=cfg.dropout,
        num_cams=cfg.num_cams,
        num_levels=cfg.num_levels,
        pc_range=cfg.pc_range,
        pillar_points=cfg.pillar_points,
        sca_points=cfg.sca_points,
        tsa_points=cfg.tsa_points,
    )


def reference_points_3d(
    bev_h: int, bev_w: int, height: float, num_points: int, bs: int, device: torch.device, dtype: torch.dtype
) -> Tensor:  # [B, D, HW, 3]
    """Each BEV cell's pillar: D points at the cell centre, at heights evenly spread over the z range (cell
    centres of D bins of `height`), all normalised to [0, 1] of the range."""
    zs = torch.linspace(0.5, height - 0.5, num_points, dtype=dtype, device=device)
    zs = zs.view(-1, 1, 1).expand(num_points, bev_h, bev_w) / height
    xs = torch.linspace(0.5, bev_w - 0.5, bev_w, dtype=dtype, device=device)
    xs = xs.view(1, 1, bev_w).expand(num_points, bev_h, bev_w) / bev_w
    ys = torch.linspace(0.5, bev_h - 0.5, bev_h, dtype=dtype, device=device)
    ys = ys.view(1, bev_h, 1).expand(num_points, bev_h, bev_w) / bev_h
    ref = torch.stack((xs, ys, zs), -1)  # [D, H, W, 3]
    ref = ref.permute(0, 3, 1, 2).flatten(2).permute(0, 2, 1)  # [D, HW, 3]
    return ref[None].repeat(bs, 1, 1, 1)


def reference_points_2d(
    bev_h: int, bev_w: int, bs: int, device: torch.device, dtype: torch.dtype
) -> Tensor:  # [B, HW, 1, 2]
    """Each BEV cell's centre (x, y) normalised to [0, 1], for the temporal self-attention (one level)."""
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(0.5, bev_h - 0.5, bev_h, dtype=dtype, device=device),
        torch.linspace(0.5, bev_w - 0.5, bev_w, dtype=dtype, device=device),
        indexing="ij",
    )
    ref = torch.stack((ref_x.reshape(-1)[None] / bev_w, ref_y.reshape(-1)[None] / bev_h), -1)  # [1, HW, 2]
    return ref.repeat(bs, 1, 1).unsqueeze(2)


def point_sampling(
    ref_3d: Tensor,  # [B, D, HW, 3] normalised
    pc_range: Sequence[float],
    lidar2img: Tensor,  # [B, N, 4, 4]
    img_shape: tuple[int, int],  # (H, W) of the padded images the features come from
) -> tuple[Tensor, Tensor]:  # [N, B, HW, D, 2] in [0, 1] of the image, [N, B, HW, D] bool
    """The pillar points projected into every camera, normalised by the padded image size, and whether each
    lies in front of the camera and strictly inside the image. Computed in fp32, as the official code."""
    ref = ref_3d.float().clone()
    for axis in range(3):
        ref[..., axis : axis + 1] = (
            ref[..., axis : axis + 1] * (pc_range[axis + 3] - pc_range[axis]) + pc_range[axis]
        )
    ref = torch.cat((ref, torch.ones_like(ref[..., :1])), -1).permute(1, 0, 2, 3)  # [D, B, HW, 4]
    depth, bs, num_query = ref.shape[:3]
    num_cam = lidar2img.shape[1]
    # [1, B, N, 1, 4, 4] @ [D, B, 1, HW, 4, 1] -> [D, B, N, HW, 4]
    cam = torch.matmul(
        lidar2img.to(torch.float32).view(1, bs, num_cam, 1, 4, 4), ref.view(depth, bs, 1, num_query, 4, 1)
    ).squeeze(-1)
    z = cam[..., 2:3]
    mask = z > DEPTH_EPS
    uv = cam[..., 0:2] / torch.maximum(z, torch.ones_like(z) * DEPTH_EPS)
    uv[..., 0] /= img_shape[1]
    uv[..., 1] /= img_shape[0]
    mask = mask & (uv[..., 1:2] > 0.0) & (uv[..., 1:2] < 1.0) & (uv[..., 0:1] < 1.0) & (uv[..., 0:1] > 0.0)
    # [D, B, N, HW, k] -> [N, B, HW, D, k]
    return uv.permute(2, 1, 3, 0, 4), mask.permute(2, 1, 3, 0, 4).squeeze(-1)


class BEVFormerLayer(nn.Module):
    """temporal self-attention, norm, spatial cross-attention, norm, FFN, norm (post-norm)."""

    def __init__(self, cfg: BEVEncoderConfig):
        super().__init__()
        self.attentions = nn.ModuleList(
            [
                TemporalSelfAttention(cfg.embed_dims, cfg.num_heads, 1, cfg.tsa_points, cfg.dropout),
                SpatialCrossAttention(
                    cfg.embed_dims, cfg.num_cams, cfg.num_heads, cfg.num_levels, cfg.sca_points, cfg.dropout
                ),
            ]
        )
        self.ffns = nn.ModuleList([FFN(cfg.embed_dims, cfg.ffn_dims, cfg.dropout)])
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.embed_dims) for _ in range(3))

    def forward(
        self,
        query: Tensor,  # [B, HW, C]
        value: Tensor,  # [B, N, L, C] camera features
        bev_pos: Tensor,  # [B, HW, C]
        ref_2d: Tensor,  # [B * 2, HW, 1, 2]
        reference_points_cam: Tensor,  # [N, B, HW, D, 2]
        bev_mask: Tensor,  # [N, B, HW, D]
        spatial_shapes: Tensor,  # [L, 2] camera levels
        bev_hw: tuple[int, int],
        prev_bev: Tensor | None,  # [B * 2, HW, C] (previous, first-layer queries) per sample, or None
    ) -> Tensor:  # [B, HW, C]
        # The BEV's position encoding enters the temporal attention only.
        query = self.attentions[0](query, prev_bev, bev_pos, ref_2d, [bev_hw])
        query = self.norms[0](query)
        query = self.attentions[1](query, value, reference_points_cam, bev_mask, spatial_shapes)
        query = self.norms[1](query)
        return self.norms[2](self.ffns[0](query))


class BEVFormerEncoder(nn.Module):
    """The BEV encoder: the queries refined by `num_layers` BEVFormer layers; returns the last layer's."""

    def __init__(self, cfg: BEVEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(BEVFormerLayer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        bev_query: Tensor,  # [B, HW, C]
        value: Tensor,  # [B, N, L, C] every camera's flattened feature levels (with camera/level embeds)
        spatial_shapes: Tensor,  # [L, 2] (H_l, W_l) of the camera feature levels
        bev_h: int,
        bev_w: int,
        bev_pos: Tensor,  # [B, HW, C]
        lidar2img: Tensor,  # [B, N, 4, 4]
        img_shape: tuple[int, int],  # (H, W) padded
        ego_shift: Tensor,  # [B, 2] (x, y) BEV fractions the previous BEV moved by (see `ego_shift`)
        prev_bev: Tensor | None = None,  # [B, HW, C] the previous BEV, turned to the current heading
    ) -> Tensor:  # [B, HW, C]
        cfg = self.cfg
        bs, len_bev, _ = bev_query.shape
        height = cfg.pc_range[5] - cfg.pc_range[2]
        ref_3d = reference_points_3d(
            bev_h, bev_w, height, cfg.pillar_points, bs, bev_query.device, bev_query.dtype
        )
        ref_2d = reference_points_2d(bev_h, bev_w, bs, bev_query.device, bev_query.dtype)
        reference_points_cam, bev_mask = point_sampling(ref_3d, cfg.pc_range, lidar2img, img_shape)

        # The official encoder shifts its 2-d reference points in place (its own comment calls this a bug
        # kept to reproduce the paper), so the current frame's points are shifted as well as the previous
        # frame's, with or without a previous BEV.
        ref_2d = ref_2d + ego_shift[:, None, None, :].to(ref_2d.dtype)
        hybrid_ref_2d = torch.stack([ref_2d, ref_2d], 1).reshape(bs * NUM_BEV_QUEUE, len_bev, 1, 2)
        if prev_bev is not None:
            # Every layer reads the previous BEV next to the encoder's *input* queries.
            prev_bev = torch.stack([prev_bev, bev_query], 1).reshape(bs * NUM_BEV_QUEUE, len_bev, -1)

        for layer in self.layers:
            bev_query = layer(
                bev_query,
                value,
                bev_pos,
                hybrid_ref_2d,
                reference_points_cam,
                bev_mask,
                spatial_shapes,
                (bev_h, bev_w),
                prev_bev,
            )
        return bev_query


def build_bev_encoder(cfg: VADConfig) -> BEVFormerEncoder:
    """The BEV encoder of a VAD configuration."""
    return BEVFormerEncoder(bev_encoder_config(cfg))
