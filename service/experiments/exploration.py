"""Exploration: a bounded share of a list's slots goes to items the model ranked lower or has shown rarely, each
slot logged with its propensity so that later evaluation can correct for the policy (inverse propensity scoring).

Epsilon-greedy over the model's own ranking: slot by slot, with probability `epsilon` the slot is explored, else
it takes the best item not yet placed. An explored slot draws from the pool (the model's ranks k+1 .. k+pool):
among its items the bundle never trained on (added live: the model is least sure of them) while there are any,
else among all of them; each item weighted by the posterior mean of its click rate as this process has seen it,
(1 + clicks) / (2 + shows) (a uniform Beta prior): an item never shown weighs 1/2, one shown often and never
clicked little, one shown and clicked much. Propensity of a slot: 1 - epsilon when exploited; epsilon x the drawn item's
weight share when explored. Numpy in / numpy out.
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


def explore(
    ranked: Sequence[str],
    k: int,
    epsilon: float,
    exposure: Exposure,
    rng: np.random.Generator,
    untrained: Sequence[bool] | None = None,
) -> Explored:
    """Fill k slots from `ranked` (item ids, the model's order, k + pool long), exploring each with probability
    `epsilon`. `exposure`: how often each item was shown and clicked (read only). `untrained`: per ranked item,
    whether the bundle never trained on it (added live): the model is least sure of those, and an explored slot
    draws among the pool's untrained items while there are any."""
    k = min(k, len(ranked))
    head = list(range(k))  # the model's top k, best first
    pool = list(range(k, len(ranked)))
    order, propensities, explored = [], [], []
    for _ in range(k):
        if pool and rng.random() < epsilon:
            unsure = [n for n, j in enumerate(pool) if untrained is not None and untrained[j]]
            among = unsure or list(range(len(pool)))
            weights = np.array([exposure.weight(ranked[pool[n]]) for n in among])
            p = weights / weights.sum()
            drawn = int(rng.choice(len(among), p=p))
            pick = among[drawn]
            order.append(pool.pop(pick))
            propensities.append(epsilon * float(p[drawn]))
            explored.append(True)
        else:
            order.append(head.pop(0))
            propensities.append(1.0 - epsilon if pool else 1.0)
            explored.append(False)
    return Explored(np.array(order, dtype=np.int64), np.array(propensities), np.array(explored, dtype=bool))


class Exposure:
    """How often this process has shown each item, and how often a list's item was clicked (an event naming the
    list). Bounded: past `max_items` ids the counts start again."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self.max_items = max_items
        self.counts: Counter[str] = Counter()
        self.clicks: Counter[str] = Counter()

    def add(self, items: Sequence[str]) -> None:
        if len(self.counts) > self.max_items:
            self.counts.clear()
            self.clicks.clear()
        self.counts.update(items)

    def click(self, item: str) -> None:
        self.clicks[item] += 1

    def weight(self, item: str) -> float:
        """The posterior mean of the item's click rate (a uniform prior): exploration's weight."""
        shown = self.counts.get(item, 0)
        return (1.0 + min(self.clicks.get(item, 0), shown)) / (2.0 + shown)
