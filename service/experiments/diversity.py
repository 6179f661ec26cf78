"""A diversity weight on a ranked list: maximal marginal relevance (Carbonell and Goldstein, 1998).

Each of the first k slots in turn goes to the candidate with the best (1 - weight) x relevance - weight x (its
highest cosine similarity to the items already placed), relevance being the ranker's score scaled to [0, 1] over
the candidates. Weight 0 keeps the ranking as it is; weight 1 orders by dissimilarity alone after the first item.
"""

from __future__ import annotations

import numpy as np


def diversify(scores: np.ndarray, embeddings: np.ndarray, k: int, weight: float) -> np.ndarray:
    """The candidates' order with the first `k` chosen by maximal marginal relevance, the rest after them as
    ranked. scores (N,) the ranker's, best first; embeddings (N, E) the candidates'. (N,) int64 positions."""
    n = len(scores)
    if weight <= 0 or n <= 1:
        return np.arange(n)
    valid = np.isfinite(scores)
    finite = np.where(valid, scores, scores[valid].min() if valid.any() else 0.0)  # a missing score ranks last
    spread = finite.max() - finite.min()
    relevance = (finite - finite.min()) / spread if spread > 0 else np.ones(n)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    closest = np.full(n, -np.inf)  # each candidate's highest similarity to those placed (none yet)
    chosen = np.zeros(n, dtype=bool)
    order: list[int] = []
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(chosen, -np.inf, (1 - weight) * relevance - weight * penalty)
        best = int(np.argmax(value))
        order.append(best)
        chosen[best] = True
        closest = np.maximum(closest, unit @ unit[best])
    return np.concatenate([np.array(order, dtype=np.int64), np.flatnonzero(~chosen)])
