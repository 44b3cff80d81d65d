"""BEVFormer's temporal self-attention (the BEV encoder's first attention): every BEV query reads, through
deformable attention, both the previous frame's BEV (already turned and shifted to the current ego pose) and
the current BEV queries, and averages the two readings.

The official module is batch-first, fixed at a BEV queue of two (previous, current) and one level (the BEV).
Parameter names are the released checkpoints' (`sampling_offsets`, `attention_weights`, `value_proj`,
`output_proj`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from netroller.models.vad.ms_deform_attn import init_deformable_attention, multi_scale_deformable_attn

NUM_BEV_QUEUE = 2
"""BEV frames read: the previous one and the current one (the official module asserts two)."""


class TemporalSelfAttention(nn.Module):
    """Deformable self-attention over the stacked (previous, current) BEVs.

    The offsets and weights are predicted from the query concatenated with its sample's previous BEV; the
    output is the mean over the two frames of each frame's deformable reading, projected, dropped out and
    added to the (position-free) query.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, dropout: float):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must divide by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        q = NUM_BEV_QUEUE
        self.sampling_offsets = nn.Linear(embed_dims * q, q * num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims * q, q * num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """The official start: ray offsets per head, uniform attention weights, Xavier projections."""
        init_deformable_attention(
            self.sampling_offsets, self.attention_weights, (self.value_proj, self.output_proj),
            num_heads=self.num_heads, num_groups=self.num_levels * NUM_BEV_QUEUE, num_points=self.num_points,
        )  # fmt: skip

    def forward(
        self,
        query: Tensor,  # [B, HW, C]
        value: Tensor | None,  # [B * 2, HW, C]: per sample (previous BEV, current BEV); None: (query, query)
        query_pos: Tensor | None,  # [B, HW, C]
        reference_points: Tensor,  # [B * 2, HW, L, 2] (x, y) in [0, 1], laid out like value
        spatial_shapes: Tensor | Sequence[tuple[int, int]],  # [L, 2] (H, W) of the BEV
    ) -> Tensor:  # [B, HW, C]
        bs, num_query, embed_dims = query.shape
        if value is None:
            # No previous BEV: the current queries (without position) stand in for it.
            value = torch.stack([query, query], 1).reshape(bs * NUM_BEV_QUEUE, num_query, embed_dims)
        identity = query
        if query_pos is not None:
            query = query + query_pos
        num_value = value.shape[1]
        nh, nq, nl, npt = self.num_heads, NUM_BEV_QUEUE, self.num_levels, self.num_points

        # Each sample's previous BEV beside its query. The official module takes value[:B], which is the
        # same at its batch size of 1 but mixes samples for B > 1 ((sample 0 previous, sample 0 current)).
        query = torch.cat([value[0::NUM_BEV_QUEUE], query], -1)  # [B, HW, 2C]
        value = self.value_proj(value).reshape(bs * nq, num_value, nh, -1)  # [B * 2, HW, nh, C / nh]

        offsets = self.sampling_offsets(query).view(bs, num_query, nh, nq, nl, npt, 2)
        # Softmax over each frame's levels and points (a head's two frames are normalised separately).
        weights = self.attention_weights(query).view(bs, num_query, nh, nq, nl * npt).softmax(-1)
        weights = weights.view(bs, num_query, nh, nq, nl, npt)
        # [B, HW, nh, 2, L, P] -> [B * 2, HW, nh, L, P]: frame-major per sample, like value.
        weights = weights.permute(0, 3, 1, 2, 4, 5).reshape(bs * nq, num_query, nh, nl, npt).contiguous()
        offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(bs * nq, num_query, nh, nl, npt, 2)

        shapes = torch.as_tensor(spatial_shapes, device=query.device)
        # Offsets are in cells of each level: divide by (W, H).
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)  # [L, 2]
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attn(value, shapes, locations, weights)  # [B * 2, HW, C]

        # [B * 2, HW, C] -> [HW, C, B, 2] -> mean over the two frames -> [B, HW, C]
        output = output.permute(1, 2, 0).view(num_query, embed_dims, bs, nq).mean(-1).permute(2, 0, 1)
        return self.dropout(self.output_proj(output)) + identity
