"""BEVFormer's spatial cross-attention (the BEV encoder's second attention): every BEV query lifts a pillar
of reference points into each camera, and reads the cameras' feature maps around the projections that
fall inside the image with deformable attention (`MSDeformableAttention3D`); the readings of the cameras
that see the query are summed and divided by their count.

Parameter names are the released checkpoints' (`deformable_attention.sampling_offsets`,
`deformable_attention.attention_weights`, `deformable_attention.value_proj`, `output_proj`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from netroller.models.vad.ms_deform_attn import init_deformable_attention, multi_scale_deformable_attn


class MSDeformableAttention3D(nn.Module):
    """Deformable attention from a query with D reference points (one per pillar height) in one image:
    each head's points per level are split evenly over the D reference points (point k * D + d samples
    around reference d). Returns the raw sampled sum: no output projection, no residual."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must divide by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """The official start: ray offsets per head, uniform attention weights, Xavier value projection."""
        init_deformable_attention(
            self.sampling_offsets, self.attention_weights, (self.value_proj,),
            num_heads=self.num_heads, num_groups=self.num_levels, num_points=self.num_points,
        )  # fmt: skip

    def forward(
        self,
        query: Tensor,  # [B', Nq, C]
        value: Tensor,  # [B', Nv, C]
        reference_points: Tensor,  # [B', Nq, D, 2] (x, y) in [0, 1] of the image
        spatial_shapes: Tensor,  # [L, 2] (H_l, W_l)
    ) -> Tensor:  # [B', Nq, C]
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        nh, nl, npt = self.num_heads, self.num_levels, self.num_points
        num_anchors = reference_points.shape[2]
        if npt % num_anchors:
            raise ValueError(f"num_points ({npt}) must divide by the {num_anchors} pillar reference points")

        value = self.value_proj(value).view(bs, num_value, nh, -1)  # [B', Nv, nh, C / nh]
        offsets = self.sampling_offsets(query).view(bs, num_query, nh, nl, npt, 2)
        # Softmax over all levels and points of a head together.
        weights = self.attention_weights(query).view(bs, num_query, nh, nl * npt).softmax(-1)
        weights = weights.view(bs, num_query, nh, nl, npt)

        # Offsets are in cells of each level: divide by (W_l, H_l).
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # [L, 2]
        offsets = offsets / normalizer[None, None, None, :, None, :]
        # [B', Nq, nh, L, P, 2] -> [B', Nq, nh, L, P / D, D, 2]: the last axis of points walks the D anchors.
        offsets = offsets.view(bs, num_query, nh, nl, npt // num_anchors, num_anchors, 2)
        locations = reference_points[:, :, None, None, None, :, :] + offsets
        locations = locations.view(bs, num_query, nh, nl, npt, 2)
        return multi_scale_deformable_attn(value, spatial_shapes, locations, weights)


class SpatialCrossAttention(nn.Module):
    """The BEV queries' reading of the camera features (per camera, only the queries it sees), averaged
    over the cameras that see each query, projected, dropped out and added to the query."""

    def __init__(
        self, embed_dims: int, num_cams: int, num_heads: int, num_levels: int, num_points: int, dropout: float
    ):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_cams = num_cams
        self.deformable_attention = MSDeformableAttention3D(embed_dims, num_heads, num_levels, num_points)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier output projection (the official `init_weight`); the inner attention starts on its own."""
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,  # [B, HW, C]
        value: Tensor,  # [B, N, L, C]: every camera's flattened feature levels
        reference_points_cam: Tensor,  # [N, B, HW, D, 2] the pillar points in each image, in [0, 1]
        bev_mask: Tensor,  # [N, B, HW, D] bool: the point lies in front of the camera, inside the image
        spatial_shapes: Tensor | Sequence[tuple[int, int]],  # [L, 2] (H_l, W_l)
    ) -> Tensor:  # [B, HW, C]
        bs, num_query, embed_dims = query.shape
        num_cams, num_value = value.shape[1], value.shape[2]
        depth = reference_points_cam.shape[3]
        shapes = torch.as_tensor(spatial_shapes, device=query.device)

        # Each camera reads only the queries it sees, gathered to the front of a padded batch (this is what
        # keeps the memory down). The official code takes the visible queries of sample 0 for every sample
        # of the batch (the count below is per sample); kept for parity.
        indexes = [mask[0].any(-1).nonzero().squeeze(-1) for mask in bev_mask]  # N x [n_i]
        max_len = max(len(idx) for idx in indexes)
        queries = query.new_zeros(bs, num_cams, max_len, embed_dims)
        refs = reference_points_cam.new_zeros(bs, num_cams, max_len, depth, 2)
        for i, idx in enumerate(indexes):
            queries[:, i, : len(idx)] = query[:, idx]
            refs[:, i, : len(idx)] = reference_points_cam[i][:, idx]

        read = self.deformable_attention(
            queries.view(bs * num_cams, max_len, embed_dims),
            value.reshape(bs * num_cams, num_value, embed_dims),
            refs.view(bs * num_cams, max_len, depth, 2),
            shapes,
        ).view(bs, num_cams, max_len, embed_dims)

        slots = torch.zeros_like(query)  # [B, HW, C]
        for i, idx in enumerate(indexes):
            slots = slots.index_add(1, idx, read[:, i, : len(idx)])
        # Divide by the number of cameras that see each query (at least 1).
        count = bev_mask.any(-1).permute(1, 2, 0).sum(-1).clamp(min=1)  # [B, HW]
        slots = slots / count[..., None]
        return self.dropout(self.output_proj(slots)) + query
