"""The BEV encoder: learned BEV queries refined by BEV self-attention and spatial cross-attention.

BEV layout: token `r * W + c` is row r (y, longitudinal, from y_min) and column c (x, lateral, from x_min);
as a map it is [B, C, H, W] with the same rows and columns, so a reference point (x_n, y_n) in [0, 1] is
directly a `grid_sample` coordinate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netroller.models.vad.attention import FFN, DeformableAttention, SpatialCrossAttention, project_points
from netroller.models.vad.config import VADConfig


def bev_reference_2d(bev_h: int, bev_w: int, device=None) -> Tensor:
    """[H*W, 2] cell centres as normalized (x, y) in [0, 1]."""
    ys = (torch.arange(bev_h, device=device, dtype=torch.float32) + 0.5) / bev_h
    xs = (torch.arange(bev_w, device=device, dtype=torch.float32) + 0.5) / bev_w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)


def pillar_points(cfg: VADConfig, device=None) -> Tensor:
    """[H*W*Z, 3] lidar-frame points: each BEV cell's centre at `pillar_points` heights over the z range."""
    ref = bev_reference_2d(cfg.bev_h, cfg.bev_w, device)  # [HW, 2]
    x0, y0, z0, x1, y1, z1 = cfg.pc_range
    zs = z0 + (
        torch.arange(cfg.pillar_points, device=device, dtype=torch.float32) + 0.5
    ) / cfg.pillar_points * (z1 - z0)
    xy = torch.stack([x0 + ref[:, 0] * (x1 - x0), y0 + ref[:, 1] * (y1 - y0)], -1)
    pts = torch.cat(
        [xy[:, None, :].expand(-1, cfg.pillar_points, 2), zs[None, :, None].expand(len(xy), -1, 1)], -1
    )
    return pts.reshape(-1, 3)


class BEVEncoderLayer(nn.Module):
    """Post-norm, as BEVFormer: self-attention, norm, spatial cross-attention, norm, FFN, norm."""

    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.bev_h, self.bev_w = cfg.bev_h, cfg.bev_w
        self.self_attn = DeformableAttention(c, cfg.num_heads, cfg.sampling_points, cfg.dropout)
        self.cross_attn = SpatialCrossAttention(c, cfg.pillar_points, cfg.dropout)
        self.ffn = FFN(c, cfg.ffn_dims, cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for _ in range(3))

    def forward(
        self, bev: Tensor, pos: Tensor, ref2d: Tensor, img_feats: Tensor, grid: Tensor, visible: Tensor
    ) -> Tensor:
        b = bev.shape[0]
        value_map = bev.transpose(1, 2).reshape(b, -1, self.bev_h, self.bev_w)  # [B, C, H, W]
        bev = self.norms[0](bev + self.self_attn(bev + pos, ref2d.expand(b, -1, -1), value_map))
        bev = self.norms[1](bev + self.cross_attn(bev + pos, img_feats, grid, visible))
        return self.norms[2](bev + self.ffn(bev))


class BEVEncoder(nn.Module):
    """Owns the learned BEV queries and positional embedding; `queries(B)` and `forward` are separate so
    NetRoller's query shift can act between them."""

    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.bev_queries = nn.Parameter(torch.randn(cfg.bev_h * cfg.bev_w, c) * 0.02)
        # Learned row + column embeddings (VAD's LearnedPositionalEncoding), summed per cell.
        self.row_embed = nn.Parameter(torch.randn(cfg.bev_h, c) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(cfg.bev_w, c) * 0.02)
        self.layers = nn.ModuleList(BEVEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.register_buffer("ref2d", bev_reference_2d(cfg.bev_h, cfg.bev_w), persistent=False)
        self.register_buffer("pillars", pillar_points(cfg), persistent=False)

    def queries(self, batch_size: int) -> Tensor:
        return self.bev_queries.unsqueeze(0).expand(batch_size, -1, -1)  # [B, HW, C]

    def positional(self) -> Tensor:
        return (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(1, -1, self.cfg.embed_dims)

    def forward(self, bev: Tensor, img_feats: Tensor, lidar_to_image: Tensor) -> Tensor:
        """bev [B, HW, C] queries; img_feats [B, 6, C, h, w]; lidar_to_image [B, 6, 4, 4] -> [B, HW, C]."""
        grid, visible = project_points(self.pillars, lidar_to_image.to(bev.dtype), self.cfg.image_size)
        pos = self.positional()
        ref2d = self.ref2d.unsqueeze(0)
        for layer in self.layers:
            bev = layer(bev, pos, ref2d, img_feats, grid, visible)
        return bev
