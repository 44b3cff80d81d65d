"""Hungarian matching of queries to ground truth (scipy), with the costs VAD uses.

Map elements have no canonical point order, so a GT vector is compared with a prediction under every
equivalent ordering (MapTR/VAD's permutation-equivalent modelling): a polyline under its 2 directions,
a closed polygon (first point == last point) under every cyclic shift of its ring in both directions.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

CLOSED_TOLERANCE = 1e-2  # metres: a vector whose ends are this close is a closed polygon outline


def hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a [Q, N] cost: (query indices, GT indices), each [min(Q, N)]."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return (
        torch.as_tensor(rows, dtype=torch.long, device=cost.device),
        torch.as_tensor(cols, dtype=torch.long, device=cost.device),
    )


def focal_cost(logits: Tensor, labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """[Q, K] logits vs [N] labels -> [Q, N] classification cost (Deformable DETR's focal cost)."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


def map_permutations(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Every equivalent ordering of each GT vector.

    vectors [M, P, 2] -> orderings [M, S, P, 2] and a validity mask [M, S], S = 2 * (P - 1): a polyline has
    2 valid orderings (forward, reversed), a closed polygon 2 * (P - 1) (each start on its ring of P - 1
    distinct points, each direction, closed again by repeating the start).
    """
    m, p, _ = vectors.shape
    ring = p - 1
    s = 2 * ring
    shifts = np.arange(ring)[:, None]
    steps = np.arange(p)[None, :]
    table = np.concatenate([(shifts + steps) % ring, (shifts - steps) % ring])  # [S, P] into the ring
    closed = (vectors[:, 0] - vectors[:, -1]).norm(dim=-1) < CLOSED_TOLERANCE  # [M]
    idx = torch.as_tensor(table, device=vectors.device)
    polygon = vectors[:, idx]  # [M, S, P, 2]
    line = torch.stack([vectors, vectors.flip(1)], 1)  # [M, 2, P, 2]
    line = torch.cat([line, line[:, :1].expand(-1, s - 2, -1, -1)], 1)  # padding, marked invalid
    orderings = torch.where(closed[:, None, None, None], polygon, line)
    valid = torch.zeros(m, s, dtype=torch.bool, device=vectors.device)
    valid[:, :2] = True
    valid = valid | closed[:, None]
    return orderings, valid


def map_points_cost(pred: Tensor, orderings: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """pred [Q, P, 2] vs GT orderings [M, S, P, 2] -> mean point L1 under the best ordering [Q, M] and
    which ordering that is [Q, M]."""
    diff = (pred[:, None, None] - orderings[None]).abs().mean((-1, -2))  # [Q, M, S]
    diff = diff.masked_fill(~valid[None], float("inf"))
    return diff.min(-1)
