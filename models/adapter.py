"""The NetRoller adapter: GM hidden states -> a shift of the specialized model's BEV.

As the authors' code has it (DESIGN.md §4):
- a positional layer embedding (one learned vector per GM layer used) added to that layer's tokens;
- one "nonsensical" embedding appended to the memory and never masked, so attention always has a null key
  (missing, stale or failed latents leave only it, and the softmax is never over an empty set);
- learnable queries ("rollers"): 1 in Bias mode, 8 in TF mode, one multi-head cross-attention from the
  queries to the `L*T` latent tokens plus the nonsensical one;
- Bias path `o + MLP(LN(o + q))`, TF path `h + MLP(LN(h)) + q`, then a Linear to the SM width.

`NetRollerShift` applies the adapter's output to the BEV, at the place the config names: the BEV queries
before the encoder (Query Shift) or the encoder's output (Feature Shift). Bias mode adds the one vector to
every BEV cell; TF mode lets the BEV tokens cross-attend to the 8 roller tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn

from netroller.errors import ConfigError


class AdapterMode(StrEnum):
    BIAS = "bias"
    TF = "tf"


class ShiftPlace(StrEnum):
    QUERY = "query"  # BEV queries, before the BEV encoder
    FEATURE = "feature"  # BEV features, after the BEV encoder


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    gm_hidden: int  # H_gm: width of the cached hidden states
    gm_layers: int  # L: number of GM layers fed to the adapter
    out_dim: int = 256  # the SM's width (VAD: 256)
    mode: AdapterMode = AdapterMode.BIAS
    shift: ShiftPlace = ShiftPlace.QUERY
    heads: int | None = (
        None  # cross-attention heads; None: 32 where H_gm allows (the paper's 4096), else fewer
    )
    layer_embedding: bool = True  # the positional layer embedding (ablation: off)
    dropout: float = 0.1
    fuse_heads: int = 8  # TF mode: heads of the BEV -> roller cross-attention
    init_std: float = 0.02  # std of the learned queries, nonsensical token and layer embedding (authors: 1.0)
    # The output projection starts at zero: in Bias mode the fine-tune starts exactly at the baseline it is
    # given, in TF mode the BEV first attends to zero rollers (authors: the Linear's default draw, whose first
    # Bias shift moved a 16-epoch embedded baseline's val L2 avg from 0.61 to 1.10 m).
    zero_init: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", AdapterMode(self.mode))
        object.__setattr__(self, "shift", ShiftPlace(self.shift))
        for name in ("gm_hidden", "gm_layers", "out_dim", "fuse_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AdapterConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.heads is not None and (self.heads < 1 or self.gm_hidden % self.heads):
            raise ConfigError(f"AdapterConfig.heads={self.heads} must divide gm_hidden={self.gm_hidden}")
        if self.out_dim % self.fuse_heads:
            raise ConfigError(
                f"AdapterConfig.fuse_heads={self.fuse_heads} must divide out_dim={self.out_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ConfigError(f"AdapterConfig.init_std must be > 0, got {self.init_std}")

    @property
    def num_queries(self) -> int:
        return 1 if self.mode is AdapterMode.BIAS else 8

    @property
    def attn_heads(self) -> int:
        if self.heads is not None:
            return self.heads
        return math.gcd(self.gm_hidden, 32)


def _mlp(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, 2 * width),
        nn.SiLU(),
        nn.Dropout(dropout),
        nn.Linear(2 * width, width),
        nn.Dropout(dropout),
    )


class NetRollerAdapter(nn.Module):
    """Rolls the GM's cached hidden states into 1 (Bias) or 8 (TF) tokens of the SM's width."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.gm_hidden
        self.layer_embed = nn.Parameter(torch.zeros(cfg.gm_layers, h)) if cfg.layer_embedding else None
        self.nonsense = nn.Parameter(torch.randn(1, 1, h) * cfg.init_std)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, h) * cfg.init_std)
        self.attn = nn.MultiheadAttention(h, cfg.attn_heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(h)
        self.mlp = _mlp(h, cfg.dropout)
        self.proj = nn.Linear(h, cfg.out_dim)
        if self.layer_embed is not None:
            nn.init.normal_(self.layer_embed, std=cfg.init_std)
        if cfg.zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def memory(self, hidden: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Latent tokens plus the nonsensical one, and the key padding mask (True = ignore).

        hidden: (B, L, T, H); valid: (B, L*T) bool, True where a latent token is real.
        """
        b, n_layers, t, h = hidden.shape
        if n_layers != self.cfg.gm_layers or h != self.cfg.gm_hidden:
            raise ConfigError(
                f"adapter expects latents with {self.cfg.gm_layers} layers x hidden {self.cfg.gm_hidden}, "
                f"got {n_layers} x {h}"
            )
        x = hidden
        if self.layer_embed is not None:
            x = x + self.layer_embed[None, :, None, :]  # (B, L, T, H): one vector per layer
        tokens = x.reshape(b, n_layers * t, h)
        mem = torch.cat([tokens, self.nonsense.expand(b, 1, h)], dim=1)  # (B, L*T + 1, H)
        pad = torch.cat([~valid, valid.new_zeros(b, 1)], dim=1)  # the nonsensical token is never masked
        return mem, pad

    def forward(self, hidden: Tensor, valid: Tensor) -> Tensor:
        """hidden (B, L, T, H_gm), valid (B, L*T) -> (B, Q, out_dim), Q = 1 (bias) or 8 (tf)."""
        mem, pad = self.memory(hidden.to(self.queries.dtype), valid)
        q = self.queries.expand(hidden.shape[0], -1, -1)  # (B, Q, H)
        o, _ = self.attn(q, mem, mem, key_padding_mask=pad, need_weights=False)
        if self.cfg.mode is AdapterMode.BIAS:
            y = o + self.mlp(self.norm(o + q))
        else:
            y = o + self.mlp(self.norm(o)) + q
        return self.proj(y)


def valid_mask(length: Tensor, present: Tensor, num_layers: int, tokens: int) -> Tensor:
    """(B, L*T) bool: position t of a sample is real when the sample has latents and t < its length."""
    pos = torch.arange(tokens, device=length.device)
    per_t = (pos[None, :] < length[:, None]) & present[:, None]  # (B, T)
    return per_t[:, None, :].expand(-1, num_layers, -1).reshape(length.shape[0], num_layers * tokens)


class RollerFusion(nn.Module):
    """TF mode: BEV tokens cross-attend to the roller tokens, then residual, LN + MLP, residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, dropout)

    def forward(self, bev: Tensor, rollers: Tensor) -> Tensor:
        """bev (B, HW, C), rollers (B, 8, C) -> (B, HW, C)."""
        a, _ = self.attn(bev, rollers, rollers, need_weights=False)
        x = bev + a
        return x + self.mlp(self.norm(x))


class NetRoller(nn.Module):
    """Adapter + (in TF mode) the BEV fusion; `shift(hidden, length, present)` returns the BEV shift."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        self.adapter = NetRollerAdapter(cfg)
        self.fusion = (
            RollerFusion(cfg.out_dim, cfg.fuse_heads, cfg.dropout) if cfg.mode is AdapterMode.TF else None
        )

    def shift(self, hidden: Tensor, length: Tensor, present: Tensor) -> NetRollerShift:
        b, n_layers, t, _ = hidden.shape
        rollers = self.adapter(hidden, valid_mask(length, present, n_layers, t))  # (B, Q, C)
        return NetRollerShift(self, rollers)


class NetRollerShift:
    """The BevShift the VAD model calls: identity at the place the config does not name."""

    def __init__(self, owner: NetRoller, rollers: Tensor):
        self.owner = owner
        self.rollers = rollers  # (B, Q, C)

    def _apply(self, bev: Tensor) -> Tensor:
        if self.owner.cfg.mode is AdapterMode.BIAS:
            return bev + self.rollers  # (B, 1, C) broadcast to every BEV cell
        return self.owner.fusion(bev, self.rollers)

    def query(self, bev_queries: Tensor) -> Tensor:
        return self._apply(bev_queries) if self.owner.cfg.shift is ShiftPlace.QUERY else bev_queries

    def feature(self, bev: Tensor) -> Tensor:
        return self._apply(bev) if self.owner.cfg.shift is ShiftPlace.FEATURE else bev
