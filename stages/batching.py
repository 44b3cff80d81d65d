"""How an epoch's samples become global batches, how N data-parallel workers split each one, and how a
worker's loss becomes its share of the global batch's loss.

Order: epoch e visits the samples in an order that depends only on (seed, e) (what makes resume exact),
cut into global batches of `batch_size`. With N workers, worker r takes the r-th contiguous slice of every
global batch (sizes differ by at most one on a short last batch), so the N workers together see exactly the
batches one worker would. A last batch with fewer samples than workers leaves some workers without one:
they repeat a sample of that batch with weight 0 (it adds nothing to the loss or the gradients; only its
BatchNorm statistics count).

Loss: every VAD loss term is a sum divided by a count (matched boxes, map elements, plan elements; see
`netroller.models.vad.losses.LossTerm`). The workers add up their counts, and each divides its own sums by
the global count once: the shares then add up to the loss one worker computes on the whole batch, and the
summed gradients to its gradient. Nothing here knows which term counts what.

Gradient accumulation is the same split in time: a global batch is cut into `accumulate` x `workers`
slices (`rank_share` over virtual ranks), worker r running slice m * workers + r as its micro-batch m. The
counts of all of a step's micro-batches are needed before the first backward: `train_step` takes them
from a forward pass without gradients first (the loss code's own counts: no second copy of them here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from netroller.models.vad.losses import LossTerm


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


def term_counts(terms: dict[str, LossTerm], weight: float) -> dict[str, float]:
    """Each term's count, times the sample's weight (0: a padding sample counts nothing)."""
    return {name: float(term.count) * weight for name, term in terms.items()}


def loss_shares(
    terms: dict[str, LossTerm], counts: dict[str, float], weight: float
) -> tuple[Tensor, dict[str, float]]:
    """(the loss to backpropagate: these terms' sums divided by the counts of the whole step, `counts`;
    each term's share as a float, which summed over the step's micro-batches and workers gives the term)."""
    shares = {name: term.divided_by(counts[name]) * weight for name, term in terms.items()}
    total = sum(shares.values())
    return total, {"total": float(total.detach()), **{k: float(v.detach()) for k, v in shares.items()}}


def global_loss(
    terms: dict[str, LossTerm],
    sum_floats: Callable[[dict[str, float]], dict[str, float]] | None,
    weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """(this worker's share of the global batch's total loss, to backpropagate; each term's share as a
    float, which summed over the workers gives the global term).

    `sum_floats` adds a dict of floats over the workers (None: one worker). `weight` 0 makes a padding
    sample add nothing, to the sums or to the counts."""
    local = term_counts(terms, weight)
    counts = sum_floats(local) if sum_floats is not None else local
    return loss_shares(terms, counts, weight)
