"""Exploration: a bounded share of a list's slots goes to items the model ranked lower or has shown rarely, each
slot logged with its propensity so that later evaluation can correct for the policy (inverse propensity scoring).

Epsilon-greedy over the model's own ranking: slot by slot, with probability `epsilon` the slot is explored, else
it takes the best item not yet placed. An explored slot draws from the pool (the model's ranks k+1 .. k+pool),
each item weighted by 1 / (1 + times this process has shown it), so items rarely shown (new ones first) are drawn
most. Propensity of a slot: 1 - epsilon when exploited; epsilon x the drawn item's weight share when explored.
Numpy in / numpy out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Explored:
    order: np.ndarray  # (<= k,) positions into the ranked list, in the order shown
    propensities: np.ndarray  # (<= k,) float64: each slot's probability under the policy
    explored: np.ndarray  # (<= k,) bool: whether the slot was explored


def explore(ranked: Sequence[str], k: int, epsilon: float, shown: Counter[str], rng: np.random.Generator) -> Explored:
    """Fill k slots from `ranked` (item ids, the model's order, k + pool long), exploring each with probability
    `epsilon`. `shown`: how often each item was shown (read only)."""
    k = min(k, len(ranked))
    head = list(range(k))  # the model's top k, best first
    pool = list(range(k, len(ranked)))
    order, propensities, explored = [], [], []
    for _ in range(k):
        if pool and rng.random() < epsilon:
            weights = np.array([1.0 / (1.0 + shown[ranked[j]]) for j in pool])
            p = weights / weights.sum()
            pick = int(rng.choice(len(pool), p=p))
            order.append(pool.pop(pick))
            propensities.append(epsilon * float(p[pick]))
            explored.append(True)
        else:
            order.append(head.pop(0))
            propensities.append(1.0 - epsilon if pool else 1.0)
            explored.append(False)
    return Explored(np.array(order, dtype=np.int64), np.array(propensities), np.array(explored, dtype=bool))


class Exposure:
    """How often this process has shown each item (bounded: past `max_items` ids the counts start again)."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self.max_items = max_items
        self.counts: Counter[str] = Counter()

    def add(self, items: Sequence[str]) -> None:
        if len(self.counts) > self.max_items:
            self.counts.clear()
        self.counts.update(items)
