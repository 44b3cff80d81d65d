"""VAD's decoders: the detection and map decoders that refine their reference points layer by layer while
their queries read the BEV through deformable attention, and the one-layer cross-attention decoder of the
motion and planning interactions. Parameter names are the released checkpoints' (`layers.<i>.attentions`,
`.norms`, `.ffns`; the deformable attention's `sampling_offsets`, `attention_weights`, `value_proj`,
`output_proj`).

Tensors are sequence-first, `[num_queries, B, C]`, and the forward signatures are the official ones
(`DetectionTransformerDecoder`, `MapDetectionTransformerDecoder`, `CustomTransformerDecoder`), so the
perception transformer calls them exactly as the official `VADPerceptionTransformer.forward` does.

Reference refinement: after layer i the agent queries' regression branch i moves each reference point in
logit space, `ref = sigmoid(delta + logit(ref))`, on x, y (box code entries 0, 1) and z (entry 4); the map
queries move x, y only. The moved points are detached before the next layer reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig
from netroller.models.vad.layer import DecoderLayer, MultiheadAttention, Op, inverse_sigmoid
from netroller.models.vad.ms_deform_attn import init_deformable_attention, multi_scale_deformable_attn

DEFORMABLE_ORDER: tuple[Op, ...] = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
INTERACTION_ORDER: tuple[Op, ...] = ("cross_attn", "norm", "ffn", "norm")


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """Sizes of one decoder (a stack of identical post-norm layers)."""

    num_layers: int
    """Decoder layers."""
    embed_dims: int
    """C: width of the queries and of the features they read."""
    num_heads: int
    """Heads of every attention."""
    ffn_dims: int
    """Hidden width of every feed-forward block."""
    dropout: float
    """Dropout of the attentions, their shortcuts and the feed-forward blocks."""
    num_points: int = 4
    """Deformable cross-attention only: sampling points per head and level."""
    num_levels: int = 1
    """Deformable cross-attention only: feature levels read (the BEV is one)."""
    return_intermediate: bool = True
    """Return every layer's output (stacked) instead of the last one's."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "embed_dims", "num_heads", "ffn_dims", "num_points", "num_levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"DecoderConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dims % self.num_heads:
            raise ConfigError(
                f"DecoderConfig.embed_dims ({self.embed_dims}) must divide by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DecoderConfig.dropout must be in [0, 1), got {self.dropout!r}")


class CustomMSDeformableAttention(nn.Module):
    """Deformable DETR's multi-scale deformable attention as the decoders use it: each query predicts, per
    head, level and point, an offset from its reference point and a weight; the output is the weighted sum
    of the value maps sampled there, projected, dropped out and added to the identity."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        dropout: float,
        batch_first: bool = False,
    ):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims ({embed_dims}) must divide by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.batch_first = batch_first
        self.dropout = nn.Dropout(dropout)
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """The official start: zero offset weights with biases that put each head's points on a ray in its
        own direction (point k at k+1 cells, the ray's larger coordinate 1), uniform attention weights,
        Xavier projections."""
        init_deformable_attention(
            self.sampling_offsets, self.attention_weights, (self.value_proj, self.output_proj),
            num_heads=self.num_heads, num_groups=self.num_levels, num_points=self.num_points,
        )  # fmt: skip

    def forward(
        self,
        query: Tensor,  # [Nq, B, C] ([B, Nq, C] when batch_first)
        key: Tensor | None = None,  # unused: the values are the keys
        value: Tensor | None = None,  # [Nv, B, C] ([B, Nv, C] when batch_first)
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,  # [B, Nv] True = value left out (zeroed)
        reference_points: Tensor
        | None = None,  # [B, Nq, L, 2] (x, y) or [B, Nq, L, 4] (x, y, w, h) in [0, 1]
        spatial_shapes: Tensor | None = None,  # [L, 2] (H_l, W_l)
        level_start_index: Tensor | None = None,  # unused by the PyTorch sampling
        **_: object,
    ) -> Tensor:  # like query
        if reference_points is None or spatial_shapes is None:
            raise ValueError("CustomMSDeformableAttention needs reference_points and spatial_shapes")
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)  # [B, Nq, C]
            value = value.permute(1, 0, 2)  # [B, Nv, C]
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        if int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()) != num_value:
            raise ValueError(f"spatial_shapes {spatial_shapes.tolist()} do not cover the {num_value} values")

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)  # [B, Nv, nh, C / nh]
        nh, nl, npt = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(bs, num_query, nh, nl, npt, 2)
        # Softmax over all levels and points of a head together.
        weights = self.attention_weights(query).view(bs, num_query, nh, nl * npt).softmax(-1)
        weights = weights.view(bs, num_query, nh, nl, npt)
        if reference_points.shape[-1] == 2:
            # Offsets are in cells of each level: divide by (W_l, H_l).
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # [L, 2]
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            # Offsets are in fractions of half the reference box, spread over the points.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / npt * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 values, got shape {tuple(reference_points.shape)}"
            )
        output = self.output_proj(multi_scale_deformable_attn(value, spatial_shapes, locations, weights))
        if not self.batch_first:
            output = output.permute(1, 0, 2)  # [Nq, B, C]
        return self.dropout(output) + identity


def deformable_layer(cfg: DecoderConfig) -> DecoderLayer:
    """Self-attention, norm, deformable cross-attention into the BEV, norm, FFN, norm."""
    return DecoderLayer(
        [
            MultiheadAttention(cfg.embed_dims, cfg.num_heads, cfg.dropout),
            CustomMSDeformableAttention(
                cfg.embed_dims, cfg.num_heads, cfg.num_levels, cfg.num_points, cfg.dropout
            ),
        ],
        DEFORMABLE_ORDER,
        cfg.embed_dims,
        cfg.ffn_dims,
        cfg.dropout,
    )


class _RefiningDecoder(nn.Module):
    """Deformable decoder layers that refine the queries' reference points with the caller's regression
    branches after every layer (DETR3D's decoder); subclasses say which box-code entries move which
    reference coordinate."""

    ref_dims: int
    # (reference coordinates, regression-branch entries) pairs, applied in logit space.
    refined: tuple[tuple[slice, slice], ...]

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.num_layers = cfg.num_layers
        self.embed_dims = cfg.embed_dims
        self.return_intermediate = cfg.return_intermediate
        self.layers = nn.ModuleList(deformable_layer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        query: Tensor,  # [Nq, B, C]
        *args: object,
        reference_points: Tensor,  # [B, Nq, ref_dims] normalised to [0, 1]
        reg_branches: Sequence[nn.Module] | None = None,
        key_padding_mask: Tensor | None = None,
        **kwargs: object,
    ) -> tuple[Tensor, Tensor]:
        """Returns every layer's queries [L, Nq, B, C] and the references after it [L, B, Nq, ref_dims]
        (return_intermediate), otherwise the last layer's [Nq, B, C] and [B, Nq, ref_dims]."""
        if reference_points.shape[-1] != self.ref_dims:
            raise ValueError(
                f"{type(self).__name__} refines {self.ref_dims}-d reference points, "
                f"got shape {tuple(reference_points.shape)}"
            )
        output = query
        intermediate, intermediate_refs = [], []
        for lid, layer in enumerate(self.layers):
            # Every query samples the one BEV level at its x, y: [B, Nq, 1, 2].
            output = layer(
                output,
                *args,
                reference_points=reference_points[..., :2].unsqueeze(2),
                key_padding_mask=key_padding_mask,
                **kwargs,
            )
            if reg_branches is not None:
                delta = reg_branches[lid](output.permute(1, 0, 2))  # [B, Nq, code_size]
                logits = inverse_sigmoid(reference_points)
                moved = torch.cat(
                    [delta[..., entries] + logits[..., coords] for coords, entries in self.refined], -1
                )
                reference_points = moved.sigmoid().detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_refs.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_refs)
        return output, reference_points


class DetectionTransformerDecoder(_RefiningDecoder):
    """The agent (box) decoder: 3-d reference points; x, y move by box-code entries 0, 1 and z by 4."""

    ref_dims = 3
    refined = ((slice(0, 2), slice(0, 2)), (slice(2, 3), slice(4, 5)))


class MapDetectionTransformerDecoder(_RefiningDecoder):
    """The map decoder: one query per map point, 2-d reference points moved by its entries 0, 1."""

    ref_dims = 2
    refined = ((slice(0, 2), slice(0, 2)),)


class CustomTransformerDecoder(nn.Module):
    """Post-norm cross-attention layers (cross_attn, norm, ffn, norm) with mmcv's multi-head attention: the
    motion head's agent-agent and agent-map attention and the planner's ego-agent and ego-map attention."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.num_layers = cfg.num_layers
        self.embed_dims = cfg.embed_dims
        self.return_intermediate = cfg.return_intermediate
        self.layers = nn.ModuleList(
            DecoderLayer(
                [MultiheadAttention(cfg.embed_dims, cfg.num_heads, cfg.dropout)],
                INTERACTION_ORDER,
                cfg.embed_dims,
                cfg.ffn_dims,
                cfg.dropout,
            )
            for _ in range(cfg.num_layers)
        )

    def forward(
        self,
        query: Tensor,  # [Nq, B, C]
        key: Tensor | None = None,  # [Nk, B, C]
        value: Tensor | None = None,  # [Nk, B, C]
        query_pos: Tensor | None = None,  # [Nq, B, C]
        key_pos: Tensor | None = None,  # [Nk, B, C]
        attn_masks: Sequence[Tensor | None] | None = None,
        key_padding_mask: Tensor | None = None,  # [B, Nk] True = key left out
        **kwargs: object,
    ) -> Tensor:
        """The last layer's queries [Nq, B, C], or every layer's [L, Nq, B, C] (return_intermediate)."""
        intermediate = []
        for layer in self.layers:
            query = layer(
                query,
                key,
                value,
                query_pos=query_pos,
                key_pos=key_pos,
                attn_masks=attn_masks,
                key_padding_mask=key_padding_mask,
                **kwargs,
            )
            if self.return_intermediate:
                intermediate.append(query)
        return torch.stack(intermediate) if self.return_intermediate else query


def _deformable_config(cfg: VADConfig, num_layers: int) -> DecoderConfig:
    return DecoderConfig(
        num_layers=num_layers,
        embed_dims=cfg.embed_dims,
        num_heads=cfg.num_heads,
        ffn_dims=cfg.ffn_dims,
        dropout=cfg.dropout,
        num_points=cfg.decoder_points,
        num_levels=1,
        return_intermediate=True,
    )


def build_detection_decoder(cfg: VADConfig) -> DetectionTransformerDecoder:
    """The agent decoder of `cfg` (`transformer.decoder`): `det_layers` layers, every layer returned."""
    return DetectionTransformerDecoder(_deformable_config(cfg, cfg.det_layers))


def build_map_decoder(cfg: VADConfig) -> MapDetectionTransformerDecoder:
    """The map decoder of `cfg` (`transformer.map_decoder`): `map_layers` layers, every layer returned."""
    return MapDetectionTransformerDecoder(_deformable_config(cfg, cfg.map_layers))


def build_interaction_decoder(cfg: VADConfig) -> CustomTransformerDecoder:
    """One of the four one-layer cross-attention decoders (`motion_decoder`, `motion_map_decoder`,
    `ego_agent_decoder`, `ego_map_decoder`): the last layer's queries only."""
    return CustomTransformerDecoder(
        DecoderConfig(
            num_layers=1,
            embed_dims=cfg.embed_dims,
            num_heads=cfg.num_heads,
            ffn_dims=cfg.ffn_dims,
            dropout=cfg.dropout,
            return_intermediate=False,
        )
    )
