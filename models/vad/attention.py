"""Attention blocks shared by the BEV encoder and the decoders.

- `DeformableAttention`: each query samples a few learned offsets around its 2D reference point on a
  feature map (per head, bilinear `grid_sample`) and mixes them with learned weights: the cost is linear in
  the number of queries, which is what lets the 200x200 BEV of vad-base run on a CPU (VAD's temporal
  self-attention and its decoders' cross-attention are deformable attentions too).
- `SpatialCrossAttention`: each BEV pillar's 3D reference points are projected with `lidar_to_image` into
  the 6 cameras; image features are sampled there and averaged over the cameras that see the point, then
  mixed over the pillar's heights with learned weights (BEVFormer/VAD's SCA, single-scale, no offsets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FFN(nn.Module):
    def __init__(self, dims: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dims, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dims)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.net(x))


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class DeformableAttention(nn.Module):
    """query [B, Q, C] with reference points [B, Q, 2] ((x, y) in [0, 1]) over a map [B, C, H, W]."""

    def __init__(self, dims: int, heads: int, points: int, dropout: float):
        super().__init__()
        self.heads, self.points, self.head_dims = heads, points, dims // heads
        self.offsets = nn.Linear(dims, heads * points * 2)  # in cells of the sampled map
        self.weights = nn.Linear(dims, heads * points)
        self.value = nn.Linear(dims, dims)
        self.out = nn.Linear(dims, dims)
        self.drop = nn.Dropout(dropout)
        self._init_offsets()

    def _init_offsets(self) -> None:
        # Deformable DETR's start: head h looks along direction 2*pi*h/heads, point p at distance p + 1.
        nn.init.zeros_(self.offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid[:, None, :] * torch.arange(1, self.points + 1, dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            self.offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: Tensor, reference: Tensor, value_map: Tensor) -> Tensor:
        b, q, c = query.shape
        h, w = value_map.shape[-2:]
        nh, npt, hd = self.heads, self.points, self.head_dims
        v = self.value(value_map.flatten(2).transpose(1, 2))  # [B, HW, C]
        v = v.view(b, h, w, nh, hd).permute(0, 3, 4, 1, 2).reshape(b * nh, hd, h, w)
        cells = torch.tensor([w, h], device=query.device, dtype=query.dtype)
        off = self.offsets(query).view(b, q, nh, npt, 2) / cells  # normalized units
        loc = reference[:, :, None, None, :] + off  # [B, Q, nh, P, 2]
        grid = (loc * 2 - 1).permute(0, 2, 1, 3, 4).reshape(b * nh, q, npt, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # sampled: [B*nh, hd, Q, P]
        attn = self.weights(query).view(b, q, nh, npt).softmax(-1)
        attn = attn.permute(0, 2, 1, 3).reshape(b * nh, 1, q, npt)
        out = (sampled * attn).sum(-1)  # [B*nh, hd, Q]
        out = out.view(b, nh, hd, q).permute(0, 3, 1, 2).reshape(b, q, c)
        return self.drop(self.out(out))


def project_points(
    points: Tensor, lidar_to_image: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Lidar-frame points [P, 3] into each camera: grid coordinates in [-1, 1] [B, N, P, 2] and a visibility
    mask [B, N, P] (in front of the camera and inside the image)."""
    homo = torch.cat([points, torch.ones_like(points[:, :1])], -1)  # [P, 4]
    cam = torch.einsum("bnij,pj->bnpi", lidar_to_image, homo)  # [B, N, P, 4]
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp(min=1e-5).unsqueeze(-1)
    size = torch.tensor(image_size, device=points.device, dtype=points.dtype)
    grid = uv / size * 2 - 1
    visible = (depth > 1e-5) & (grid.abs() <= 1).all(-1)
    return grid, visible


class SpatialCrossAttention(nn.Module):
    """BEV queries [B, HW, C] gather camera features at their pillars' projected 3D reference points."""

    def __init__(self, dims: int, pillar_points: int, dropout: float):
        super().__init__()
        self.pillar_points = pillar_points
        self.value = nn.Conv2d(dims, dims, 1)
        self.height_weights = nn.Linear(dims, pillar_points)
        self.out = nn.Linear(dims, dims)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        img_feats: Tensor,
        grid: Tensor,
        visible: Tensor,
    ) -> Tensor:
        """query [B, HW, C]; img_feats [B, N, C, h, w]; grid [B, N, HW*Z, 2]; visible [B, N, HW*Z]."""
        b, hw, c = query.shape
        n = img_feats.shape[1]
        z = self.pillar_points
        values = self.value(img_feats.flatten(0, 1)).unflatten(0, (b, n))  # [B, N, C, h, w]
        hits = visible.sum(1).clamp(min=1).to(query.dtype)  # [B, HW*Z] cameras seeing each point
        # Each sample's weight: its height's attention weight over the number of cameras seeing the point,
        # so summing samples into their pillar gives the height-weighted mean over cameras directly.
        scale = self.height_weights(query).softmax(-1).reshape(b, hw * z) / hits  # [B, HW*Z]
        pillars = []
        # Sample only the points a camera sees (each point is seen by one or two of the six): BEVFormer's
        # query rebatching, which keeps vad-base's 160k points cheap on a CPU.
        for i in range(b):
            rows, samples = [], []
            for cam in range(n):
                idx = visible[i, cam].nonzero().squeeze(1)  # [k]
                pts = grid[i, cam, idx].view(1, -1, 1, 2)
                s = F.grid_sample(values[i : i + 1, cam], pts, mode="bilinear", align_corners=False)
                samples.append(s[0, :, :, 0] * scale[i, idx])  # [C, k]
                rows.append(torch.div(idx, z, rounding_mode="floor"))
            pillars.append(query.new_zeros(c, hw).index_add(1, torch.cat(rows), torch.cat(samples, 1)))
        return self.drop(self.out(torch.stack(pillars).transpose(1, 2)))  # [B, HW, C]
