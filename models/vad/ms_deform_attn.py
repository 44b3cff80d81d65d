"""Multi-scale deformable attention's sampling core in plain PyTorch (Deformable DETR), as mmcv's
`multi_scale_deformable_attn_pytorch` computes it: every head bilinearly samples its value maps at its
points (`grid_sample`, align_corners=False, zeros outside) and sums the samples with its weights.

The BEV encoder's two attentions and the decoders' cross-attention all call this one function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attn(
    value: Tensor,  # [B, sum(H_l * W_l), nh, C / nh]
    spatial_shapes: Tensor | Sequence[tuple[int, int]],  # [L, 2] (H_l, W_l)
    sampling_locations: Tensor,  # [B, Nq, nh, L, P, 2] (x, y) in [0, 1] of each level's map
    attention_weights: Tensor,  # [B, Nq, nh, L, P]
) -> Tensor:  # [B, Nq, C]
    """The weighted sum of each head's bilinear samples of its value maps, heads concatenated."""
    bs, _, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    values = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1]; with align_corners=False, -1 and 1 are the outer edges of the border pixels.
    grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(shapes):
        # [B, HW, nh, d] -> [B, nh * d, HW] -> [B * nh, d, H, W]
        value_l = values[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, head_dims, h, w)
        # [B, Nq, nh, P, 2] -> [B * nh, Nq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # [B * nh, d, Nq, P]
        samples.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # [B, Nq, nh, L, P] -> [B * nh, 1, Nq, L * P]
    weights = attention_weights.transpose(1, 2).reshape(
        bs * num_heads, 1, num_queries, num_levels * num_points
    )
    # [B * nh, d, Nq, L * P] -> [B * nh, d, Nq] -> [B, C, Nq]
    out = (
        (torch.stack(samples, dim=-2).flatten(-2) * weights)
        .sum(-1)
        .view(bs, num_heads * head_dims, num_queries)
    )
    return out.transpose(1, 2).contiguous()


def init_sampling_offsets(linear: nn.Linear, num_heads: int, num_groups: int, num_points: int) -> None:
    """Deformable DETR's start for an offset projection: zero weights, and biases that put each head's points
    on a ray in the head's own direction (the ray's larger coordinate 1, point k at k+1 cells), repeated for
    each of `num_groups` (levels, or levels x BEV frames)."""
    nn.init.zeros_(linear.weight)
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [nh, 2]
    grid = grid / grid.abs().max(-1, keepdim=True)[0]
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_groups, num_points, 1)  # [nh, groups, P, 2]
    grid = grid * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    with torch.no_grad():
        linear.bias.copy_(grid.view(-1))


def init_deformable_attention(
    sampling_offsets: nn.Linear,
    attention_weights: nn.Linear,
    projections: tuple[nn.Linear, ...],
    *,
    num_heads: int,
    num_groups: int,
    num_points: int,
) -> None:
    """The official start of a deformable attention: ray offsets per head (`init_sampling_offsets`), zero
    attention logits (uniform weights after the softmax), Xavier-uniform projections with zero biases."""
    init_sampling_offsets(sampling_offsets, num_heads, num_groups, num_points)
    nn.init.zeros_(attention_weights.weight)
    nn.init.zeros_(attention_weights.bias)
    for proj in projections:
        nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(proj.bias)
