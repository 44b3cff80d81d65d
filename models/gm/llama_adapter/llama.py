"""LLaMA-2 as LLaMA-Adapter V2 runs it: Meta's decoder (RMSNorm, interleaved-pair rotary embeddings, SwiGLU)
with bias tuning (biases on wq, wo, w1, w2, w3) and, in the top blocks, gated attention to adapter queries.

The adapter attention of a block is a second softmax, over the block's adapter queries alone (keys and values
by the block's own wk / wv, no rotary embedding), scaled per head by tanh(gate) and added to the attention
output. Parameter names follow Meta's checkpoint (`layers.0.attention.wq.weight`, ...), so its tensors load
by name. One forward reads a `TokenBatch` (tokens at absolute positions, optionally through a `KVCache`) and
returns the residual stream after the chosen blocks at the chosen indices, plus the next-token logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from netroller.models.gm.llama_adapter.config import ROPE_THETA, LlamaParams

AttentionKernel = Literal["sdpa", "eager"]


@dataclass(frozen=True)
class TokenBatch:
    """Tokens for one decoder pass."""

    tokens: torch.Tensor
    """[B, S] token ids (padding: 0)."""
    positions: torch.Tensor
    """[B, S] absolute positions: the rotary angle and, with a cache, the slot each token's key is stored in."""
    read: torch.Tensor
    """[B, K] indices into S whose residual streams are returned; logits are taken at `read[:, -1]`."""


@dataclass(frozen=True)
class DecoderOutput:
    hidden: torch.Tensor
    """[B, len(layers), K, D] outputs of the asked blocks (before the final norm) at `read`."""
    logits: torch.Tensor | None
    """[B, V] float32 next-token logits at `read[:, -1]`, when asked."""


class KVCache:
    """Keys and values of every block for B rows of up to `length` positions; a token at position p is stored
    in slot p, and a query at position p attends to slots <= p (rows may be at different positions)."""

    def __init__(self, params: LlamaParams, batch: int, length: int, *, dtype, device) -> None:
        shape = (batch, length, params.n_heads, params.head_dim)
        self.length = length
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(params.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(params.n_layers)]


@dataclass(frozen=True)
class _Slots:
    """One block's cache and where this pass's keys go: slot positions[b, s] of row b."""

    keys: torch.Tensor  # (B, L, H, hd)
    values: torch.Tensor
    rows: torch.Tensor  # (B, 1)
    positions: torch.Tensor  # (B, S)

    def store(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[self.rows, self.positions] = k
        self.values[self.rows, self.positions] = v
        return self.keys, self.values


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 whatever the compute dtype, as Meta's code does.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, S, head_dim / 2] (float32) of Meta's rotary angles: position * theta^(-2i / head_dim)."""
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * freqs
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, hd] by pairs of adjacent channels (Meta's layout, not Hugging Face's halves)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, S, H, hd/2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None], sin[:, :, None]
    return torch.stack((re * c - im * s, re * s + im * c), dim=-1).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, params: LlamaParams) -> None:
        super().__init__()
        dim, self.n_heads, self.head_dim = params.dim, params.n_heads, params.head_dim
        self.wq = nn.Linear(dim, dim, bias=True)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=True)
        self.gate = nn.Parameter(torch.zeros(1, self.n_heads, 1, 1))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        slots: _Slots | None,
        adapter: torch.Tensor | None,
        kernel: AttentionKernel,
    ) -> torch.Tensor:
        """x [B, S, D]; mask [B, 1, S, keys] True where attended; `slots`: the cache this pass's keys join (the
        keys are then the whole cache); adapter [B, Q, D] or None."""
        bsz, seq, _ = x.shape
        q = apply_rotary(self.wq(x).view(bsz, seq, self.n_heads, self.head_dim), *rope)
        k = apply_rotary(self.wk(x).view(bsz, seq, self.n_heads, self.head_dim), *rope)
        v = self.wv(x).view(bsz, seq, self.n_heads, self.head_dim)
        if slots is not None:
            k, v = slots.store(k, v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S or keys, hd)
        if kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(2, 3)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~mask, float("-inf"))
            out = F.softmax(scores.float(), dim=-1).type_as(q) @ v
        if adapter is not None:
            out = out + self._adapter_attention(q, adapter)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))

    def _adapter_attention(self, q: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
        """tanh(gate) * softmax over the adapter queries (a softmax of their own), q (B, H, S, hd)."""
        bsz, n_query, _ = adapter.shape
        v = self.wv(adapter).view(bsz, n_query, self.n_heads, self.head_dim).transpose(1, 2)
        if n_query == 1:  # one query: its value, gated (softmax over one key is 1)
            return self.gate.tanh() * v
        k = self.wk(adapter).view(bsz, n_query, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(2, 3)) / math.sqrt(self.head_dim)
        return (self.gate.tanh() * F.softmax(scores.float(), dim=-1).type_as(q)) @ v


class FeedForward(nn.Module):
    def __init__(self, params: LlamaParams) -> None:
        super().__init__()
        self.w1 = nn.Linear(params.dim, params.ffn_dim, bias=True)
        self.w2 = nn.Linear(params.ffn_dim, params.dim, bias=True)
        self.w3 = nn.Linear(params.dim, params.ffn_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, params: LlamaParams) -> None:
        super().__init__()
        self.attention = Attention(params)
        self.feed_forward = FeedForward(params)
        self.attention_norm = RMSNorm(params.dim, params.norm_eps)
        self.ffn_norm = RMSNorm(params.dim, params.norm_eps)

    def forward(self, x, rope, mask, slots, adapter, kernel):
        h = x + self.attention(self.attention_norm(x), rope, mask, slots, adapter, kernel)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    """The decoder; the last `adapters.shape[1]` blocks read adapter queries."""

    def __init__(self, params: LlamaParams, *, kernel: AttentionKernel = "sdpa") -> None:
        super().__init__()
        self.params = params
        self.kernel: AttentionKernel = kernel
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(params) for _ in range(params.n_layers))
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)

    def forward(
        self,
        batch: TokenBatch,
        adapters: torch.Tensor,
        *,
        layers: tuple[int, ...],
        cache: KVCache | None = None,
        logits: bool = True,
    ) -> DecoderOutput:
        """adapters [B, A, Q, D]: the queries of the top A blocks, bottom one first."""
        tokens, positions = batch.tokens, batch.positions
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]
        h = self.tok_embeddings(tokens)  # (B, S, D)
        rope = rotary(positions, self.params.head_dim)
        if cache is None:  # keys are this pass's tokens: causal by position
            mask = positions[:, None, :, None] >= positions[:, None, None, :]
        else:
            slot_ids = torch.arange(cache.length, device=tokens.device)
            mask = slot_ids[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, S, L)
        first_adapted = len(self.layers) - adapters.shape[1]
        # Without logits, nothing above the highest asked block is needed (a cache is then not filled above it).
        top = len(self.layers) - 1 if logits else max(layers)
        kept = []
        for i, block in enumerate(self.layers[: top + 1]):
            slots = None
            if cache is not None:
                slots = _Slots(cache.keys[i], cache.values[i], rows, positions)
            adapter = adapters[:, i - first_adapted] if i >= first_adapted else None
            h = block(h, rope, mask, slots, adapter, self.kernel)
            if i in layers:
                kept.append(h[rows, batch.read])  # (B, K, D)
        hidden = torch.stack(kept, dim=1)
        out = None
        if logits:
            last = h[rows[:, 0], batch.read[:, -1]]  # (B, D)
            out = self.output(self.norm(last)).float()
        return DecoderOutput(hidden=hidden, logits=out)
