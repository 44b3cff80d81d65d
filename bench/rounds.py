"""What every benchmark shares: interleaved rounds, per-round figures summarized as median/min/max, load.

A ratio is measured once per round, from the two things it compares timed side by side in that round; the
order in which the things run changes from round to round (`order`) so that none always runs first and none
always runs right after the same other one (a run after one that churned the caches pays for it), and the
figure reported is the median over the rounds with its min and max beside it (`spread`). The load average
of the machine at the start and end of each benchmark is reported with it (`bench.run`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence

MIN_ROUNDS = 5
"""Rounds a full benchmark run uses at least, for every ratio it reports."""


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def order(names: Sequence[str], k: int) -> list[str]:
    """The order of round `k`: the rotations of `names`, then those of `names` reversed, and again.

    A plain rotation keeps every name right after the same other name; over 2 * len(names) rounds these
    orders put every name right after every other name equally often.
    """
    n = len(names)
    base = list(names) if (k // n) % 2 == 0 else list(names)[::-1]
    k %= n
    return [*base[k:], *base[:k]]


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every run once per round, in `order`; each returns the figure it measured (e.g. seconds)."""
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        for name in order(names, k):
            out[name].append(runs[name]())
    return out


def per_round(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """The ratio num / den of each round."""
    if len(num) != len(den):
        raise ValueError(f"per_round: {len(num)} numerators for {len(den)} denominators")
    return [n / d for n, d in zip(num, den, strict=True)]


def spread(name: str, values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """{name: median, name_min: min, name_max: max} of a per-round figure."""
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: per-round values must be finite and non-empty, got {list(values)}")
    return {
        name: round(statistics.median(values), digits),
        f"{name}_min": round(min(values), digits),
        f"{name}_max": round(max(values), digits),
    }


def check_rounds(name: str, rounds: int) -> None:
    """ValueError naming the field when a benchmark is asked for no rounds at all."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {rounds!r}")
