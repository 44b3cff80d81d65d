"""VAD's perception: the part of the head that makes the BEV and decodes boxes and map vectors from it.

    BEV queries (+ learned positional encoding) --perception transformer--> BEV [HW, B, C]
        agent queries --detection decoder--> per layer: class logits, box code (reference + branch delta)
        map point queries --map decoder--> per layer: class logits per vector, points, their min-max boxes

Every decoder layer has its own classification and regression branch (`with_box_refine`); the regression
branches also move the decoders' reference points between layers. A map vector is `map_num_pts` point
queries, each the sum of its vector's and its point index's embedding (`map_query_embed_type`
'instance_pts'); its class comes from the mean of its points' features.

`PerceptionHead` registers its modules directly on VAD's head under the released checkpoints' names
(`pts_bbox_head.transformer...`, `.cls_branches.<layer>.<i>`, `.reg_branches...`, `.map_cls_branches...`,
`.map_reg_branches...`, `.bev_embedding`, `.query_embedding`, `.map_instance_embedding`,
`.map_pts_embedding`, `.positional_encoding.{row,col}_embed`, `.code_weights`, `.map_code_weights`); see
`layer.HeadPart`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netroller.models.vad.config import VADConfig
from netroller.models.vad.layer import HeadPart, inverse_sigmoid, mlp_branch
from netroller.models.vad.perception_transformer import BevShift, build_perception_transformer
from netroller.models.vad.positional import build_positional_encoding

# Box code: cx, cy, log w, log l, cz, log h, sin yaw, cos yaw, vx, vy.
CODE_SIZE = 10
# Map regression: one normalised (x, y) per point query.
MAP_CODE_SIZE = 2
# Hidden Linear layers of every classification and regression branch (`num_reg_fcs`).
# Prior probability the sigmoid-focal classification branches start at.
CLS_PRIOR = 0.01
# The box-loss weights of the official head (velocity down-weighted), kept as checkpoint entries.
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
# The configs' `map_code_weights`.
MAP_CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


@dataclass
class Perception:
    """What the perception part gives the motion and planning part; L = decoder layers, A = agent queries,
    V = map vectors, P = points per vector. Boxes as `outputs.VADOutputs` describes them."""

    bev_embed: Tensor  # [HW, B, C] the BEV features (after NetRoller's Feature Shift, if any)
    hs: Tensor  # [L_det, B, A, C] agent queries after every detection decoder layer
    outputs_classes: Tensor  # [L_det, B, A, num_classes] logits
    outputs_coords: Tensor  # [L_det, B, A, 10] box code, cx, cy, cz in metres of the lidar frame
    outputs_coords_bev: Tensor  # [B, A, 2] last layer's box centres, normalised x, y in [0, 1], detached
    map_hs: Tensor  # [L_map, B, V*P, C] map point queries after every map decoder layer (vector-major)
    map_outputs_classes: Tensor  # [L_map, B, V, map_num_classes] logits
    map_outputs_coords: Tensor  # [L_map, B, V, 4] normalised cx, cy, w, h of each vector's extent
    map_outputs_pts_coords: Tensor  # [L_map, B, V, P, 2] normalised x, y
    map_outputs_coords_bev: Tensor  # [B, V, P, 2] last layer's normalised points, detached

    @property
    def agent_feats(self) -> Tensor:  # [B, A, C]
        """The last detection layer's agent queries: what the motion head starts from."""
        return self.hs[-1]

    @property
    def map_feats(self) -> Tensor:  # [B, V*P, C]
        """The last map layer's point queries."""
        return self.map_hs[-1]


def _per_layer(branch: nn.Module, num_layers: int) -> nn.ModuleList:
    """One independent copy of `branch` per decoder layer (the official deep copies: equal starts)."""
    return nn.ModuleList(copy.deepcopy(branch) for _ in range(num_layers))


def xyxy_to_cxcywh(box: Tensor) -> Tensor:  # [..., 4] x1, y1, x2, y2 -> [..., 4] cx, cy, w, h
    x1, y1, x2, y2 = box.split(1, dim=-1)
    return torch.cat([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


class PerceptionHead(HeadPart):
    """The BEV, the detection and the map decoding of VAD's head."""

    def __init__(self, cfg: VADConfig):
        super().__init__(cfg)
        c = cfg.embed_dims
        self.bev_h, self.bev_w = cfg.bev_h, cfg.bev_w
        self.pc_range = cfg.pc_range
        self.map_num_vec, self.map_num_pts_per_vec = cfg.map_num_vec, cfg.map_num_pts
        self.transformer = build_perception_transformer(cfg)
        self.cls_branches = _per_layer(mlp_branch(c, cfg.num_classes, norm=True), cfg.det_layers)
        self.reg_branches = _per_layer(mlp_branch(c, CODE_SIZE, norm=False), cfg.det_layers)
        self.map_cls_branches = _per_layer(mlp_branch(c, cfg.map_num_classes, norm=True), cfg.map_layers)
        self.map_reg_branches = _per_layer(mlp_branch(c, MAP_CODE_SIZE, norm=False), cfg.map_layers)
        self.bev_embedding = nn.Embedding(cfg.bev_h * cfg.bev_w, c)
        # Each query embedding is (position, content), C each.
        self.query_embedding = nn.Embedding(cfg.num_query, 2 * c)
        self.map_instance_embedding = nn.Embedding(cfg.map_num_vec, 2 * c)
        self.map_pts_embedding = nn.Embedding(cfg.map_num_pts, 2 * c)
        self.positional_encoding = build_positional_encoding(cfg)
        # Loss weights the official head keeps as frozen parameters, hence as checkpoint entries.
        self.code_weights = nn.Parameter(torch.tensor(CODE_WEIGHTS), requires_grad=False)
        self.map_code_weights = nn.Parameter(torch.tensor(MAP_CODE_WEIGHTS), requires_grad=False)

    def init_weights(self) -> None:
        """The official start of this part: the transformer's own initialisation and the classification
        branches' output biases at the 1 % prior; the other layers keep PyTorch's defaults, as officially.
        (Only this part: VAD's head calls each part's `init_weights`.)"""
        self.transformer.init_weights()
        prior_logit = -math.log((1 - CLS_PRIOR) / CLS_PRIOR)
        for branch in (*self.cls_branches, *self.map_cls_branches):
            nn.init.constant_(branch[-1].bias, prior_logit)

    @property
    def grid_length(self) -> tuple[float, float]:
        """(metres per BEV row, metres per BEV column)."""
        x0, y0, _, x1, y1, _ = self.pc_range
        return ((y1 - y0) / self.bev_h, (x1 - x0) / self.bev_w)

    def bev_inputs(self, mlvl_feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The learned BEV queries [HW, C] and their positional encoding [B, C, H, W]."""
        bs, dtype = mlvl_feats[0].shape[0], mlvl_feats[0].dtype
        bev_queries = self.bev_embedding.weight.to(dtype)
        bev_mask = bev_queries.new_zeros(bs, self.bev_h, self.bev_w)
        return bev_queries, self.positional_encoding(bev_mask).to(dtype)

    def _batch_first_prev_bev(self, prev_bev: Tensor | None) -> Tensor | None:
        """The previous BEV as the transformer takes it, [B, HW, C], from either layout: a tensor whose
        second dimension is not HW is the head's own sequence-first `bev_embed` [HW, B, C] (the official
        transformer's rule)."""
        if prev_bev is None or prev_bev.shape[1] == self.bev_h * self.bev_w:
            return prev_bev
        return prev_bev.permute(1, 0, 2)

    def map_query_embeds(self) -> Tensor:  # [V*P, 2C], vector-major
        """Point query p of vector v: the vector's embedding plus the point index's."""
        pts = self.map_pts_embedding.weight.unsqueeze(0)  # [1, P, 2C]
        instances = self.map_instance_embedding.weight.unsqueeze(1)  # [V, 1, 2C]
        return (pts + instances).flatten(0, 1)

    def bev_features(
        self,
        mlvl_feats: Sequence[Tensor],  # levels x [B, N, C, h, w]
        lidar2img: Tensor,  # [B, N, 4, 4] lidar frame -> padded-image pixels
        img_shape: tuple[int, int],  # (H, W) of the padded images
        can_bus: Tensor,  # [B, 18], position and yaw change as deltas to the previous frame
        prev_bev: Tensor | None,  # the previous frame's BEV, [B, HW, C] or [HW, B, C]; None at a scene start
        shift: BevShift | None = None,
    ) -> Tensor:  # [B, HW, C]
        """The BEV features alone (the official `only_bev` path: the training queue's earlier frames)."""
        bev_queries, bev_pos = self.bev_inputs(mlvl_feats)
        return self.transformer.get_bev_features(
            mlvl_feats, bev_queries, self.bev_h, self.bev_w, self.grid_length, bev_pos, lidar2img,
            img_shape, can_bus, self._batch_first_prev_bev(prev_bev), shift,
        )  # fmt: skip

    def perceive(
        self,
        mlvl_feats: Sequence[Tensor],  # levels x [B, N, C, h, w]
        lidar2img: Tensor,  # [B, N, 4, 4]
        img_shape: tuple[int, int],  # (H, W) padded
        can_bus: Tensor,  # [B, 18] deltas as in `bev_features`
        prev_bev: Tensor | None,  # as in `bev_features`
        shift: BevShift | None = None,
    ) -> Perception:
        """The official head's forward up to (and including) the per-layer box and map outputs."""
        dtype = mlvl_feats[0].dtype
        bev_queries, bev_pos = self.bev_inputs(mlvl_feats)
        outputs = self.transformer(
            mlvl_feats,
            bev_queries,
            self.query_embedding.weight.to(dtype),
            self.map_query_embeds().to(dtype),
            self.bev_h,
            self.bev_w,
            grid_length=self.grid_length,
            bev_pos=bev_pos,
            lidar2img=lidar2img,
            img_shape=img_shape,
            can_bus=can_bus,
            reg_branches=self.reg_branches,
            map_reg_branches=self.map_reg_branches,
            prev_bev=self._batch_first_prev_bev(prev_bev),
            shift=shift,
        )
        return self.decode_layers(*outputs)

    def decode_layers(
        self,
        bev_embed: Tensor,  # [HW, B, C]
        hs: Tensor,  # [L, A, B, C] detection decoder states
        init_reference: Tensor,  # [B, A, 3] normalised (x, y, z)
        inter_references: Tensor,  # [L, B, A, 3] after every layer
        map_hs: Tensor,  # [L, V*P, B, C] map decoder states
        map_init_reference: Tensor,  # [B, V*P, 2] normalised (x, y)
        map_inter_references: Tensor,  # [L, B, V*P, 2]
    ) -> Perception:
        """Every decoder layer's boxes and map vectors from the transformer's outputs: layer l's branch
        delta is added, in logit space, to the reference points layer l started from."""
        hs = hs.permute(0, 2, 1, 3)  # [L, B, A, C]
        map_hs = map_hs.permute(0, 2, 1, 3)  # [L, B, V*P, C]
        x0, y0, z0, x1, y1, z1 = self.pc_range
        classes, coords, coords_bev = [], [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            delta = self.reg_branches[lvl](hs[lvl])  # [B, A, 10]
            xy = (delta[..., 0:2] + reference[..., 0:2]).sigmoid()
            z = (delta[..., 4:5] + reference[..., 2:3]).sigmoid()
            coords_bev.append(xy.detach())
            # The normalised centre goes to metres; sizes, yaw and velocity stay the branch's own.
            coords.append(
                torch.cat(
                    [
                        xy[..., 0:1] * (x1 - x0) + x0,
                        xy[..., 1:2] * (y1 - y0) + y0,
                        delta[..., 2:4],
                        z * (z1 - z0) + z0,
                        delta[..., 5:],
                    ],
                    dim=-1,
                )
            )
            classes.append(self.cls_branches[lvl](hs[lvl]))

        map_classes, map_coords, map_pts = [], [], []
        bs = map_hs.shape[1]
        for lvl in range(map_hs.shape[0]):
            reference = inverse_sigmoid(map_init_reference if lvl == 0 else map_inter_references[lvl - 1])
            per_vector = map_hs[lvl].view(bs, self.map_num_vec, self.map_num_pts_per_vec, -1)  # [B, V, P, C]
            map_classes.append(self.map_cls_branches[lvl](per_vector.mean(2)))
            pts = (self.map_reg_branches[lvl](map_hs[lvl]) + reference[..., 0:2]).sigmoid()  # [B, V*P, 2]
            box, pts = self.map_transform_box(pts)
            map_coords.append(box)
            map_pts.append(pts)

        return Perception(
            bev_embed=bev_embed,
            hs=hs,
            outputs_classes=torch.stack(classes),
            outputs_coords=torch.stack(coords),
            outputs_coords_bev=coords_bev[-1],
            map_hs=map_hs,
            map_outputs_classes=torch.stack(map_classes),
            map_outputs_coords=torch.stack(map_coords),
            map_outputs_pts_coords=torch.stack(map_pts),
            map_outputs_coords_bev=map_pts[-1].detach(),
        )

    def map_transform_box(self, pts: Tensor, y_first: bool = False) -> tuple[Tensor, Tensor]:
        """Map points [B, V*P, 2] (x, y; y, x when `y_first`) -> each vector's min-max box [B, V, 4]
        (cx, cy, w, h) and the points [B, V, P, 2] (in their given order)."""
        pts = pts.view(pts.shape[0], self.map_num_vec, self.map_num_pts_per_vec, 2)
        xs, ys = (pts[..., 1], pts[..., 0]) if y_first else (pts[..., 0], pts[..., 1])  # [B, V, P]
        box = torch.stack([xs.min(-1)[0], ys.min(-1)[0], xs.max(-1)[0], ys.max(-1)[0]], dim=-1)
        return xyxy_to_cxcywh(box), pts
