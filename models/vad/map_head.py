"""Map queries (instances x points, VAD's hierarchical queries) -> map class logits and normalized points."""

from __future__ import annotations

from torch import Tensor, nn

from netroller.models.vad.attention import inverse_sigmoid
from netroller.models.vad.config import VADConfig
from netroller.models.vad.decoder import DecoderLayer, mlp


class MapHead(nn.Module):
    def __init__(self, cfg: VADConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        # Query of instance v, point p = instance embedding v + point embedding p (content and position).
        self.inst_query = nn.Embedding(cfg.num_map_vectors, c)
        self.pts_query = nn.Embedding(cfg.map_points, c)
        self.inst_pos = nn.Embedding(cfg.num_map_vectors, c)
        self.pts_pos = nn.Embedding(cfg.map_points, c)
        self.reference = nn.Linear(c, 2)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.map_layers))
        self.cls = mlp(c, c, cfg.num_map_classes)
        self.reg = mlp(c, c, 2)
        nn.init.constant_(self.cls[-1].bias, -4.595)

    def forward(self, bev_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """bev_map [B, C, H, W] -> instance features [B, V, C], logits [B, V, K], points [B, V, P, 2] in [0, 1]."""
        b = bev_map.shape[0]
        v, p, c = self.cfg.num_map_vectors, self.cfg.map_points, self.cfg.embed_dims
        query = (
            (self.inst_query.weight[:, None] + self.pts_query.weight[None])
            .reshape(1, v * p, c)
            .expand(b, -1, -1)
        )
        pos = (
            (self.inst_pos.weight[:, None] + self.pts_pos.weight[None]).reshape(1, v * p, c).expand(b, -1, -1)
        )
        ref = self.reference(pos).sigmoid()  # [B, V*P, 2]
        for layer in self.layers:
            query = layer(query, pos, ref, bev_map)
        points = (inverse_sigmoid(ref) + self.reg(query)).sigmoid().view(b, v, p, 2)
        inst = query.view(b, v, p, c).mean(2)  # [B, V, C]
        return inst, self.cls(inst), points
