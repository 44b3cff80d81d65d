"""One ego query -> ego-agent and ego-map interaction -> planning MLP (one mode per driving command).

The ego query is a learned vector plus an embedding of the ego velocity (VAD-Base's ego status); it
attends to the agents (their query and motion features, keyed by position) and then to the map instances.
The MLP regresses per-step offsets for every command; their cumulative sum is the plan.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netroller.models.vad.config import VADConfig
from netroller.models.vad.decoder import PosEmbed2D, mlp


class PlanningHead(nn.Module):
    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.ego_query = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.ego_status = mlp(2, c, c)
        self.pos_embed = PosEmbed2D(c)
        self.ego_agent = nn.MultiheadAttention(c, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ego_map = nn.MultiheadAttention(c, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for _ in range(2))
        self.plan = mlp(2 * c, c, cfg.ego_modes * cfg.fut_steps * 2, layers=3)

    def forward(
        self, ego_velocity: Tensor, agents: Tensor, agent_xy: Tensor, map_feats: Tensor, map_xy: Tensor
    ) -> Tensor:
        """ego_velocity [B, 2]; agents [B, A, C] at agent_xy [B, A, 2]; map [B, V, C] at map_xy [B, V, 2]
        (positions normalized to [0, 1]) -> plan [B, ego_modes, fut_steps, 2] metres, cumulative."""
        b = agents.shape[0]
        status = self.ego_status(ego_velocity)
        ego = self.ego_query.expand(b, -1, -1) + status.unsqueeze(1)  # [B, 1, C]
        ego_pos = self.pos_embed(torch.full((b, 1, 2), 0.5, device=agents.device, dtype=agents.dtype))
        key = agents + self.pos_embed(agent_xy.detach())
        ego = self.norms[0](ego + self.ego_agent(ego + ego_pos, key, agents, need_weights=False)[0])
        key = map_feats + self.pos_embed(map_xy.detach())
        ego = self.norms[1](ego + self.ego_map(ego + ego_pos, key, map_feats, need_weights=False)[0])
        steps = self.plan(torch.cat([ego.squeeze(1), status], -1))
        return steps.view(b, self.cfg.ego_modes, self.cfg.fut_steps, 2).cumsum(2)
