"""How an epoch's samples become global batches, how N data-parallel workers split each one, and how a
worker's loss becomes its share of the global batch's loss.

Order: epoch e visits the samples in an order that depends only on (seed, e) (what makes resume exact),
cut into global batches of `batch_size`. With N workers, worker r takes the r-th contiguous slice of every
global batch (sizes differ by at most one on a short last batch), so the N workers together see exactly the
batches one worker would. A last batch with fewer samples than workers leaves some workers without one:
they repeat a sample of that batch with weight 0 (it adds nothing to the loss or the gradients; only its
BatchNorm statistics count).

Loss: VAD's terms are sums over the batch divided by counts over the batch (boxes, agent futures, map
elements, plan steps) or means over its samples. A worker's term divided by its own count is not its part
of the global term, so each term is rescaled by (local count / global count): the workers' shares then add
up to the loss one worker computes on the whole batch, and summed gradients to its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from netroller.errors import ModelError
from netroller.models.vad.batch import VADTargets
from netroller.models.vad.config import VADConfig
from netroller.models.vad.losses import LOSS_WEIGHTS

# The count each loss term is normalised by (as in netroller.models.vad.losses).
TERM_COUNTS = {
    "det_cls": "boxes",
    "det_box": "boxes",
    "motion_reg": "futures",
    "motion_cls": "futures",
    "map_cls": "map_elements",
    "map_pts": "map_elements",
    "plan_reg": "plan_steps",
    "plan_col": "samples",
    "plan_bound": "samples",
    "plan_dir": "samples",
}


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch`'s sample order."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def global_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches of sample indices, exactly as a shuffling DataLoader with
    `epoch_generator(seed, epoch)` yields them to a single worker."""
    loader = DataLoader(
        range(num_samples),
        batch_size=batch_size,
        shuffle=True,
        generator=epoch_generator(seed, epoch),
        collate_fn=list,
    )
    return [list(b) for b in loader]


def rank_share(batch: list[int], rank: int, workers: int) -> tuple[list[int], float]:
    """Worker `rank`'s slice of one global batch and its loss weight (0 for a repeated padding sample)."""
    # Rounded up, so the first workers take the extra samples and rank 0 always has a real one.
    lo, hi = -(-rank * len(batch) // workers), -(-(rank + 1) * len(batch) // workers)
    if hi > lo:
        return batch[lo:hi], 1.0
    return [batch[rank % len(batch)]], 0.0


def loss_counts(targets: VADTargets, cfg: VADConfig) -> dict[str, float]:
    """The raw counts behind each loss term's normaliser, for one (local) batch.

    Agent futures count the GT boxes with a valid future step that the detection matching pairs with a
    query: every box when there are at least as many queries as boxes (VAD: 300), which is what this
    assumes; with more boxes than queries the count is capped at the number of queries per sample.
    """
    futures = 0
    for mask in targets.agent_fut_mask:
        futures += min(int((mask.sum(-1) > 0).sum()), cfg.num_agent_queries)
    return {
        "boxes": float(sum(len(lab) for lab in targets.labels)),
        "futures": float(futures),
        "map_elements": float(sum(len(lab) for lab in targets.map_labels)),
        "plan_steps": float(targets.ego_fut_mask.sum()),
        "samples": float(targets.ego_fut_mask.shape[0]),
    }


def _normaliser(kind: str, count: float) -> float:
    """The divisor VAD's loss uses for a term of this kind, from its raw count."""
    if kind == "samples":
        return count
    if kind == "plan_steps":
        return max(1.0, 2.0 * count)  # L1 over (x, y) of each valid step
    return max(1.0, count)


def share_of_global(
    losses: dict[str, Tensor],
    local: dict[str, float],
    total: dict[str, float],
    cfg: VADConfig,
    *,
    weight: float = 1.0,
) -> dict[str, Tensor]:
    """This worker's share of each global loss term, and of the weighted "total".

    `local` are this worker's `loss_counts`, `total` their sum over the workers (padding workers add
    zeros); the shares of all workers add up to the terms of the whole global batch.
    """
    out: dict[str, Tensor] = {}
    for name, value in losses.items():
        if name == "total":
            continue
        kind = TERM_COUNTS.get(name)
        if kind is None:
            raise ModelError(
                f"loss term {name!r} has no data-parallel normaliser: add it to "
                "netroller.stages.batching.TERM_COUNTS"
            )
        out[name] = value * (weight * _normaliser(kind, local[kind]) / _normaliser(kind, total[kind]))
    out["total"] = sum(getattr(cfg, LOSS_WEIGHTS[k]) * v for k, v in out.items())
    return out
