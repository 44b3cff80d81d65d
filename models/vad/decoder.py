"""The decoder layer the agent and map heads share, and a small 2D positional MLP."""

from __future__ import annotations

from torch import Tensor, nn

from netroller.models.vad.attention import FFN, DeformableAttention
from netroller.models.vad.config import VADConfig


class DecoderLayer(nn.Module):
    """Post-norm DETR layer: query self-attention, deformable cross-attention to the BEV map, FFN."""

    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.self_attn = nn.MultiheadAttention(c, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn = DeformableAttention(c, cfg.num_heads, cfg.sampling_points, cfg.dropout)
        self.ffn = FFN(c, cfg.ffn_dims, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for _ in range(3))

    def forward(self, query: Tensor, pos: Tensor, reference: Tensor, bev_map: Tensor) -> Tensor:
        """query, pos [B, Q, C]; reference [B, Q, 2] in [0, 1]; bev_map [B, C, H, W]."""
        qk = query + pos
        query = self.norms[0](query + self.drop(self.self_attn(qk, qk, query, need_weights=False)[0]))
        query = self.norms[1](query + self.cross_attn(query + pos, reference, bev_map))
        return self.norms[2](query + self.ffn(query))


def mlp(cin: int, hidden: int, cout: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = cin
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, cout))
    return nn.Sequential(*mods)


class PosEmbed2D(nn.Module):
    """Normalized (x, y) in [0, 1] -> a C-wide positional embedding (for agent, map and ego keys)."""

    def __init__(self, dims: int):
        super().__init__()
        self.net = mlp(2, dims, dims)

    def forward(self, xy: Tensor) -> Tensor:
        return self.net(xy)
