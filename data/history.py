"""Which earlier frames make a training sample's history queue, by the official VAD dataset's rule.

VAD trains each sample with `queue_length - 1` earlier frames whose BEVs are computed without gradient and
chained into the previous BEV of the current frame. The official dataset draws them from the
`queue_length` positions before the sample: it shuffles those positions, drops the first, and walks the
rest from the latest back; a position of the same scene and earlier than the last frame taken is taken,
any other (an earlier scene, before the index start) repeats the last frame taken. So at a scene start the
queue holds copies of the current frame, whose CAN-bus deltas are then zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netroller.data.index import SampleRecord


def history_positions(
    records: Sequence[SampleRecord], i: int, queue_length: int, rng: np.random.Generator
) -> list[int]:
    """Positions in `records` (ordered by scene, then time) of sample `i`'s history, oldest first;
    `queue_length - 1` of them."""
    candidates = list(range(i - queue_length, i))
    rng.shuffle(candidates)
    taken = i
    out = []
    for j in sorted(candidates[1:], reverse=True):
        j = max(0, j)
        if (
            records[j].scene_token == records[i].scene_token
            and records[j].frame_index < records[taken].frame_index
        ):
            taken = j
        out.append(taken)
    return out[::-1]
