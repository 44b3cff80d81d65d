"""VAD's motion prediction and planning: the part of the head after the detection and map decoders.

    agent queries x fut_mode mode queries --agent-agent attention--> per-mode features
        --attention to the nearby confident map instances (LaneNet features)--> + map context
        --traj branches--> fut_mode futures per agent and a score per mode
    ego query --ego-agent attention (fused agent futures)--> --ego-map attention--> one plan per command

Positions are the decoders' normalised BEV coordinates ([0, 1] over `pc_range`, x then y). A map instance
stands at its point nearest the normalised origin (the range's x_min, y_min corner), as the official head
places it. The motion head lets a mode query see only the map instances whose score passes `map_thresh`
and whose position lies within `dis_thresh` of its agent, plus one always-visible empty instance (zero
feature at (1, 1)), so that an agent with no map nearby reads that empty instance instead of nothing. The
planner sees every agent and map instance whose score passes `query_thresh`.

`MotionPlanningHead` registers its modules directly on VAD's head under the released checkpoints' names
(`pts_bbox_head.motion_decoder.layers.0...`, `.lane_encoder.layer_seq.lmlp_0.mlp.0...`, `.ego_fut_decoder.4`,
...); see `layer.HeadPart`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig
from netroller.models.vad.decoders import build_interaction_decoder
from netroller.models.vad.layer import HeadPart, mlp_branch

# Hidden Linear layers of the trajectory, trajectory-score and planning branches (`num_reg_fcs`).
# Layers of the lane encoder (`LaneNet(..., num_subgraph_layers=3)`).
LANE_ENCODER_LAYERS = 3
# Prior probability the mode-score branch starts at (its sigmoid focal loss's bias init).
TRAJ_CLS_PRIOR = 0.01


class LaneMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU (`mlp.0`, `mlp.1`)."""

    def __init__(self, in_dims: int, hidden_dims: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dims, hidden_dims), nn.LayerNorm(hidden_dims), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class LaneNet(nn.Module):
    """A PointNet-style encoder of one polyline per instance (VectorNet's subgraph): each layer maps every
    point and appends the max over the instance's points; the output is the final max over the points."""

    def __init__(self, in_dims: int, hidden_dims: int, num_layers: int):
        super().__init__()
        self.layer_seq = nn.Sequential()
        for i in range(num_layers):
            self.layer_seq.add_module(f"lmlp_{i}", LaneMLP(in_dims, hidden_dims))
            in_dims = hidden_dims * 2

    def forward(self, points: Tensor) -> Tensor:  # [B, V, P, C_in] -> [B, V, 2 * hidden]
        x = points
        for layer in self.layer_seq:
            x = layer(x)  # [B, V, P, hidden]
            pooled = x.max(dim=-2)[0]  # [B, V, hidden]
            x = torch.cat([x, pooled.unsqueeze(-2).expand_as(x)], dim=-1)  # [B, V, P, 2 * hidden]
        return x.max(dim=-2)[0]


@dataclass
class MotionPrediction:
    """The motion head's outputs for one forward (the last detection layer's agents)."""

    traj_preds: Tensor  # [B, A, fut_mode, fut_ts*2] per-step offsets, x, y interleaved
    traj_cls_scores: Tensor  # [B, A, fut_mode] logits
    mode_feats: Tensor  # [B, A, fut_mode, 2C] agent-agent features | map context, what the planner fuses


def select_by_score(
    tokens: Tensor,  # [B, N, C]
    pos: Tensor,  # [B, N, 2]
    logits: Tensor,  # [B, N, K]
    thresh: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The tokens whose best class score (sigmoid) exceeds `thresh`, kept in their order at the front of
    each sample and padded to the batch's largest count with zero tokens at (0, 0).

    Returns tokens [B, n, C], positions [B, n, 2] and the padding mask [B, n] (True = padding).
    """
    keep = logits.sigmoid().max(dim=-1)[0] > thresh  # [B, N]
    counts = keep.sum(dim=1)  # [B]
    n = int(counts.max()) if keep.shape[0] else 0  # a data-dependent size, as the official per-sample loop
    # Stable sort of the "dropped" flags: kept tokens first, each group in its original order.
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :n]  # [B, n]
    padding = torch.arange(n, device=tokens.device) >= counts[:, None]  # [B, n]
    tokens = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
    pos = pos.gather(1, order[..., None].expand(-1, -1, pos.shape[-1]))
    return tokens.masked_fill(padding[..., None], 0.0), pos.masked_fill(padding[..., None], 0.0), padding


def nearest_point(pts: Tensor) -> Tensor:  # [B, V, P, 2] -> [B, V, 2]
    """Each instance's point nearest the (normalised) origin: where the official head places the instance."""
    dist = torch.sqrt(pts[..., 0] ** 2 + pts[..., 1] ** 2)  # [B, V, P]
    idx = dist.argmin(dim=-1)  # [B, V]
    return pts.gather(2, idx[..., None, None].expand(-1, -1, 1, pts.shape[-1])).squeeze(2)


def map_keys_per_mode(
    agent_xy: Tensor,  # [B, A, 2] normalised
    lanes: Tensor,  # [B, V, C] lane-encoder features
    map_logits: Tensor,  # [B, V, K]
    map_pts: Tensor,  # [B, V, P, 2] normalised
    fut_mode: int,
    map_thresh: float,
    dis_thresh: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The map keys of every mode query (the official `select_and_pad_pred_map`, fixed pad on): the
    instances whose score passes `map_thresh`, positioned relative to the query's agent and masked beyond
    `dis_thresh` of it, then the empty instance (zero feature at (1, 1)) that is never masked.

    Returns keys [B*A*M, n+1, C], positions [B*A*M, n+1, 2] and the padding mask [B*A*M, n+1]
    (True = unseen); rows are batch-major, then agent, then mode.
    """
    b, a = agent_xy.shape[:2]
    lanes, lane_xy, padding = select_by_score(lanes, nearest_point(map_pts), map_logits, map_thresh)
    n, c = lanes.shape[1:]
    mode_xy = agent_xy.repeat_interleave(fut_mode, dim=1)  # [B, A*M, 2]
    rel = lane_xy[:, None] - mode_xy[:, :, None]  # [B, A*M, n, 2]
    dist = torch.sqrt(rel[..., 0] ** 2 + rel[..., 1] ** 2)  # [B, A*M, n]
    # `~(d <= t)` rather than `d > t`: a NaN distance is masked, as officially.
    mask = padding[:, None] | ~(dist <= dis_thresh)  # [B, A*M, n]
    q = b * a * fut_mode
    keys = lanes[:, None].expand(b, a * fut_mode, n, c).reshape(q, n, c)
    keys = torch.cat([keys, keys.new_zeros(q, 1, c)], dim=1)
    rel = torch.cat([rel.reshape(q, n, 2), rel.new_ones(q, 1, 2)], dim=1)
    mask = torch.cat([mask.reshape(q, n), mask.new_zeros(q, 1)], dim=1)
    return keys, rel, mask


class MotionPlanningHead(HeadPart):
    """Agent futures and the ego plan from the decoders' last-layer agent and map queries."""

    def __init__(self, cfg: VADConfig):
        super().__init__(cfg)
        c = cfg.embed_dims
        if c % 2:
            raise ConfigError(f"VADConfig.embed_dims must be even for the lane encoder's halves, got {c!r}")
        self.fut_ts = cfg.fut_ts
        self.fut_mode = cfg.fut_mode
        self.ego_fut_mode = cfg.ego_fut_mode
        self.map_thresh = cfg.map_thresh
        self.dis_thresh = cfg.dis_thresh
        self.query_thresh = cfg.query_thresh
        # Names and order of the official `_init_layers`. One motion layer, hence one branch each.
        self.traj_branches = nn.ModuleList([mlp_branch(2 * c, cfg.fut_ts * 2, norm=False)])
        # One sigmoid logit per mode.
        self.traj_cls_branches = nn.ModuleList([mlp_branch(2 * c, 1, norm=True)])
        self.motion_decoder = build_interaction_decoder(cfg)
        self.motion_mode_query = nn.Embedding(cfg.fut_mode, c)
        self.pos_mlp_sa = nn.Linear(2, c)
        # Official: LaneNet(256, 128, 3), i.e. (C, C/2) at the released width.
        self.lane_encoder = LaneNet(c, c // 2, LANE_ENCODER_LAYERS)
        self.motion_map_decoder = build_interaction_decoder(cfg)
        self.pos_mlp = nn.Linear(2, c)
        self.ego_query = nn.Embedding(1, c)
        self.ego_agent_decoder = build_interaction_decoder(cfg)
        self.ego_agent_pos_mlp = nn.Linear(2, c)
        self.ego_map_decoder = build_interaction_decoder(cfg)
        self.ego_map_pos_mlp = nn.Linear(2, c)
        self.ego_fut_decoder = mlp_branch(2 * c, cfg.ego_fut_mode * cfg.fut_ts * 2, norm=False)
        self.agent_fus_mlp = nn.Sequential(
            nn.Linear(cfg.fut_mode * 2 * c, c), nn.LayerNorm(c), nn.ReLU(), nn.Linear(c, c)
        )

    def init_weights(self) -> None:
        """The official start of these parts: mode scores at the 1 % prior, Xavier-uniform matrices in the
        four attention decoders and the lane encoder, orthogonal mode queries, Xavier position projections
        with zero biases. The other layers keep PyTorch's defaults, as officially. (Only this part: VAD's
        head calls each part's `init_weights`.)"""
        prior_logit = -math.log((1 - TRAJ_CLS_PRIOR) / TRAJ_CLS_PRIOR)
        for branch in self.traj_cls_branches:
            nn.init.constant_(branch[-1].bias, prior_logit)
        for module in (
            self.motion_decoder,
            self.motion_map_decoder,
            self.lane_encoder,
            self.ego_agent_decoder,
            self.ego_map_decoder,
        ):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        nn.init.orthogonal_(self.motion_mode_query.weight)
        for linear in (self.pos_mlp_sa, self.pos_mlp):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def predict_motion(
        self,
        agent_feats: Tensor,  # [B, A, C] last detection layer's queries
        agent_xy: Tensor,  # [B, A, 2] their normalised box centres
        map_feats: Tensor,  # [B, V*P, C] last map layer's point queries
        map_logits: Tensor,  # [B, V, map_num_classes] last map layer's class logits
        map_pts: Tensor,  # [B, V, P, 2] last map layer's normalised points
    ) -> MotionPrediction:
        """fut_mode futures per agent and their scores (the official `forward`'s motion part)."""
        b, a, c = agent_feats.shape
        m = self.fut_mode
        # Positions enter as the official head's detached copies: no gradient into the boxes or points.
        agent_xy, map_pts = agent_xy.detach(), map_pts.detach()

        # Agent-agent attention between all agents' modes: query (agent a, mode k) = agent a + mode k.
        query = agent_feats.transpose(0, 1)[:, None] + self.motion_mode_query.weight[None, :, None]
        query = query.flatten(0, 1)  # [A*M, B, C], agent-major
        pos = self.pos_mlp_sa(agent_xy)  # [B, A, C]
        pos = pos.unsqueeze(2).expand(b, a, m, c).flatten(1, 2).transpose(0, 1)  # [A*M, B, C]
        mode_hs = self.motion_decoder(query, query, query, query_pos=pos, key_pos=pos)  # [A*M, B, C]

        # Agent-map attention: each mode query reads the map around its agent, one query per attention row.
        lanes = self.lane_encoder(map_feats.reshape(b, *map_pts.shape[1:3], c))  # [B, V, C]
        keys, key_pos, key_mask = map_keys_per_mode(
            agent_xy, lanes, map_logits, map_pts, self.fut_mode, self.map_thresh, self.dis_thresh
        )
        ca_query = mode_hs.transpose(0, 1).flatten(0, 1).unsqueeze(0)  # [1, B*A*M, C]
        # The queries sit at their agent's own origin: the encoding of (0, 0) is the projection's bias.
        ca_pos = self.pos_mlp(ca_query.new_zeros(*ca_query.shape[:2], 2))  # [1, B*A*M, C]
        key_pos = self.pos_mlp(key_pos.transpose(0, 1))  # [n+1, B*A*M, C]
        keys = keys.transpose(0, 1)  # [n+1, B*A*M, C]
        ca = self.motion_map_decoder(
            ca_query, keys, keys, query_pos=ca_pos, key_pos=key_pos, key_padding_mask=key_mask
        )  # [1, B*A*M, C]

        mode_feats = torch.cat(
            [mode_hs.transpose(0, 1).unflatten(1, (a, m)), ca.squeeze(0).unflatten(0, (b, a, m))], dim=-1
        )  # [B, A, M, 2C]
        return MotionPrediction(
            traj_preds=self.traj_branches[0](mode_feats),
            traj_cls_scores=self.traj_cls_branches[0](mode_feats).squeeze(-1),
            mode_feats=mode_feats,
        )

    def plan(
        self,
        mode_feats: Tensor,  # [B, A, fut_mode, 2C] MotionPrediction.mode_feats
        agent_logits: Tensor,  # [B, A, num_classes] last detection layer's class logits
        agent_xy: Tensor,  # [B, A, 2] their normalised box centres
        map_feats: Tensor,  # [B, V*P, C] last map layer's point queries
        map_logits: Tensor,  # [B, V, map_num_classes]
        map_pts: Tensor,  # [B, V, P, 2] normalised points
    ) -> Tensor:
        """The ego futures, one per driving command: [B, ego_fut_mode, fut_ts, 2] per-step offsets in
        metres (the official `forward`'s planning part).

        A sample none of whose agents (or map instances) passes `query_thresh` while another's does gets
        NaN, as officially (no fixed pad here)."""
        b, a = agent_logits.shape[:2]
        c = self.ego_query.weight.shape[-1]
        agent_xy, map_pts = agent_xy.detach(), map_pts.detach()
        ego = self.ego_query.weight.unsqueeze(0).expand(b, 1, c).transpose(0, 1)  # [1, B, C]
        ego_at_origin = ego.new_zeros(1, b, 2)  # the ego sits at the (normalised) origin of its encodings

        agents = self.agent_fus_mlp(mode_feats.reshape(b, a, -1))  # [B, A, M*2C] -> [B, A, C]
        agents, agents_xy, agents_pad = select_by_score(agents, agent_xy, agent_logits, self.query_thresh)
        ego_agent = self.ego_agent_decoder(
            ego,
            agents.transpose(0, 1),
            agents.transpose(0, 1),
            query_pos=self.ego_agent_pos_mlp(ego_at_origin),
            key_pos=self.ego_agent_pos_mlp(agents_xy).transpose(0, 1),
            key_padding_mask=agents_pad,
        )  # [1, B, C]

        lanes = self.lane_encoder(map_feats.reshape(b, *map_pts.shape[1:3], c))  # [B, V, C]
        lanes, lanes_xy, lanes_pad = select_by_score(
            lanes, nearest_point(map_pts), map_logits, self.query_thresh
        )
        ego_map = self.ego_map_decoder(
            ego_agent,
            lanes.transpose(0, 1),
            lanes.transpose(0, 1),
            query_pos=self.ego_map_pos_mlp(ego_at_origin),
            key_pos=self.ego_map_pos_mlp(lanes_xy).transpose(0, 1),
            key_padding_mask=lanes_pad,
        )  # [1, B, C]

        ego_feats = torch.cat([ego_agent, ego_map], dim=-1).transpose(0, 1)  # [B, 1, 2C]
        return self.ego_fut_decoder(ego_feats).reshape(b, self.ego_fut_mode, self.fut_ts, 2)
