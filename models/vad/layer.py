"""The transformer building blocks every VAD decoder is made of, with the parameter names of the released
checkpoints (mmcv's FFN, its MultiheadAttention wrapper and its post-norm layer loop).

All tensors here are sequence-first, `[num_tokens, B, C]`, as the official decoders are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Op = Literal["self_attn", "cross_attn", "norm", "ffn"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both factors to >= eps, as the official reference refinement."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


NUM_REG_FCS = 2  # hidden layers of every prediction branch (the official `num_reg_fcs`)


def mlp_branch(in_dims: int, out_dims: int, norm: bool) -> nn.Sequential:
    """A prediction branch of VAD's head: NUM_REG_FCS hidden layers (Linear [-> LayerNorm] -> ReLU) and an
    output Linear, so the Linear indices are 0, 3, 6 with norms (classification) and 0, 2, 4 without."""
    layers: list[nn.Module] = []
    for _ in range(NUM_REG_FCS):
        layers.append(nn.Linear(in_dims, in_dims))
        if norm:
            layers.append(nn.LayerNorm(in_dims))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(in_dims, out_dims))
    return nn.Sequential(*layers)


class FFN(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> Dropout, plus the identity (mmcv's two-layer FFN).

    Names: `layers.0.0` is the first Linear, `layers.1` the second.
    """

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(ffn_dims, embed_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, identity: Tensor | None = None) -> Tensor:
        return (x if identity is None else identity) + self.layers(x)


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` with positional encodings added to query and key, and the identity added to
    its (dropped-out) output: mmcv's wrapper, whose deprecated `dropout=p` the configs use for both the
    attention weights and the shortcut."""

    def __init__(self, embed_dims: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout)
        self.proj_drop = nn.Dropout(0.0)
        self.dropout_layer = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,  # [Nq, B, C]
        key: Tensor | None = None,  # [Nk, B, C]
        value: Tensor | None = None,  # [Nk, B, C]
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,  # [B, Nk] True = ignore
        **_: object,
    ) -> Tensor:
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        # mmcv reuses the query's encoding for the key only when the shapes agree (self-attention).
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        out = self.attn(query, key, value, attn_mask=attn_mask, key_padding_mask=key_padding_mask)[0]
        return identity + self.dropout_layer(self.proj_drop(out))


class DecoderLayer(nn.Module):
    """A post-norm transformer layer that runs `operation_order` (mmcv's BaseTransformerLayer).

    `attentions` holds one module per attention op, in order; each is called as
    `attn(query, key, value, identity=None, query_pos=..., key_pos=..., attn_mask=..., key_padding_mask=...,
    **kwargs)`, self-attention with key = value = query and key_pos = query_pos. Extra keyword arguments
    (reference points, spatial shapes, ...) go to every attention.
    """

    def __init__(
        self,
        attentions: Sequence[nn.Module],
        operation_order: Sequence[Op],
        embed_dims: int,
        ffn_dims: int,
        dropout: float,
    ):
        super().__init__()
        if operation_order[0] == "norm":
            raise ValueError("pre-norm layers are not used by VAD")
        n_attn = sum(op in ("self_attn", "cross_attn") for op in operation_order)
        if len(attentions) != n_attn:
            raise ValueError(
                f"{n_attn} attention ops in {tuple(operation_order)}, got {len(attentions)} modules"
            )
        self.operation_order = tuple(operation_order)
        self.attentions = nn.ModuleList(attentions)
        self.ffns = nn.ModuleList(FFN(embed_dims, ffn_dims, dropout) for op in operation_order if op == "ffn")
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for op in operation_order if op == "norm")

    def forward(
        self,
        query: Tensor,  # [Nq, B, C]
        key: Tensor | None = None,
        value: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_masks: Sequence[Tensor | None] | None = None,
        query_key_padding_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        **kwargs: object,
    ) -> Tensor:
        attn_i = norm_i = ffn_i = 0
        masks = list(attn_masks) if attn_masks is not None else [None] * len(self.attentions)
        for op in self.operation_order:
            if op == "self_attn":
                query = self.attentions[attn_i](
                    query,
                    query,
                    query,
                    None,
                    query_pos=query_pos,
                    key_pos=query_pos,
                    attn_mask=masks[attn_i],
                    key_padding_mask=query_key_padding_mask,
                    **kwargs,
                )
                attn_i += 1
            elif op == "cross_attn":
                query = self.attentions[attn_i](
                    query,
                    key,
                    value,
                    None,
                    query_pos=query_pos,
                    key_pos=key_pos,
                    attn_mask=masks[attn_i],
                    key_padding_mask=key_padding_mask,
                    **kwargs,
                )
                attn_i += 1
            elif op == "norm":
                query = self.norms[norm_i](query)
                norm_i += 1
            else:
                query = self.ffns[ffn_i](query)
                ffn_i += 1
        return query


class HeadPart(nn.Module):
    """Base of the parts VAD's head is assembled from (perception, motion and planning): each part's
    `__init__(cfg)` registers its modules directly on the head, so the parameter names stay the released
    checkpoints' flat `pts_bbox_head.<name>` (cooperative multiple inheritance; see `vad_head.VADHead`)."""

    def __init__(self, cfg: object):
        super().__init__()
