"""Agent queries -> detection (class logits, encoded boxes) and motion (modes x steps, mode logits).

Detection follows VAD/DETR3D: learned queries with learned positions, reference points from the positions,
decoder layers over the BEV map, box centres regressed as a refinement of the reference point. Motion adds
one embedding per mode to each agent query, lets agents attend to each other and to the map instances,
and regresses per-step offsets whose cumulative sum is the trajectory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netroller.models.vad.attention import inverse_sigmoid
from netroller.models.vad.box_coder import BOX_CODE_SIZE
from netroller.models.vad.config import VADConfig
from netroller.models.vad.decoder import DecoderLayer, PosEmbed2D, mlp


class AgentHead(nn.Module):
    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.query = nn.Embedding(cfg.num_agent_queries, c)
        self.query_pos = nn.Embedding(cfg.num_agent_queries, c)
        self.reference = nn.Linear(c, 2)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.det_layers))
        self.cls = mlp(c, c, cfg.num_det_classes)
        self.reg = mlp(c, c, BOX_CODE_SIZE)
        # Motion.
        self.mode_embed = nn.Embedding(cfg.fut_modes, c)
        self.pos_embed = PosEmbed2D(c)
        self.agent_agent = nn.MultiheadAttention(c, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.agent_map = nn.MultiheadAttention(c, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.motion_norms = nn.ModuleList(nn.LayerNorm(c) for _ in range(2))
        self.traj = mlp(c, c, cfg.fut_steps * 2, layers=3)
        self.mode_cls = mlp(c, c, 1)
        # Focal-loss prior: start every class at probability 0.01, as DETR-style detectors do.
        nn.init.constant_(self.cls[-1].bias, -4.595)

    def detect(self, bev_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """bev_map [B, C, H, W] -> agent features [B, A, C], logits [B, A, K], box codes [B, A, 10]."""
        b = bev_map.shape[0]
        query = self.query.weight.unsqueeze(0).expand(b, -1, -1)
        pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        ref = self.reference(pos).sigmoid()  # [B, A, 2]
        for layer in self.layers:
            query = layer(query, pos, ref, bev_map)
        logits = self.cls(query)
        reg = self.reg(query)
        centre_xy = (inverse_sigmoid(ref) + reg[..., :2]).sigmoid()
        boxes = torch.cat([centre_xy, reg[..., 2:3].sigmoid(), reg[..., 3:]], -1)
        return query, logits, boxes

    def motion(
        self, agents: Tensor, boxes: Tensor, map_feats: Tensor, map_xy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """agents [B, A, C], boxes [B, A, 10], map instance features [B, V, C] at map_xy [B, V, 2] ->
        motion features [B, A, M, C], trajectories [B, A, M, T, 2] (metres, cumulative), logits [B, A, M]."""
        b, a, c = agents.shape
        m = self.cfg.fut_modes
        agent_pos = self.pos_embed(boxes[..., :2].detach())
        qk = agents + agent_pos
        x = self.motion_norms[0](agents + self.agent_agent(qk, qk, agents, need_weights=False)[0])
        x = (x + agent_pos).unsqueeze(2) + self.mode_embed.weight  # [B, A, M, C]
        x = x.reshape(b, a * m, c)
        key = map_feats + self.pos_embed(map_xy.detach())
        x = self.motion_norms[1](x + self.agent_map(x, key, map_feats, need_weights=False)[0]).view(
            b, a, m, c
        )
        steps = self.traj(x).view(b, a, m, self.cfg.fut_steps, 2)
        return x, steps.cumsum(3), self.mode_cls(x).squeeze(-1)
