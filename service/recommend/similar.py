"""Similar items: what people who liked an item go on to like, blended with what the two-tower model places near it.

The candidates of item a are its nearest items by two-tower cosine (the FAISS index) and the items whose
co-consumption neighbour list (the bundle's `item_neighbours`, EASE's weights B[h, c] by default) holds a: the
items c that a predicts. Each candidate scores

    embedding_weight * cosine(a, c) + co_consumption_weight * B[a, c] / max_c' B[a, c']

(the co-consumption weight scaled by a's strongest, so the blend does not depend on the weights' scale; 0 for
a candidate a does not predict); ties go to the higher cosine. The exporter chooses the two weights on its
validation split (next-item prediction: the items users liked right after a) and records them in the manifest
(`similar_items`). An item with no co-consumption (one added live, or one nobody's list holds) gets its nearest
items by cosine.

Pure numpy (the FAISS search is the caller's), shared by the exporter and the service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.recommend.features import ItemNeighbourIndex


@dataclass(frozen=True, slots=True)
class SimilarityWeights:
    embedding: float = 1.0
    co_consumption: float = 0.0


@dataclass(frozen=True, slots=True)
class SimilarItems:
    items: np.ndarray  # (<= k,) int64, best first
    scores: np.ndarray  # (<= k,) float32: the blend
    cosines: np.ndarray  # (<= k,) float32: two-tower cosine with the query item
    co_consumption: np.ndarray  # (<= k,) float32 in [0, 1]: B[a, c] / max B[a, .] (0: a does not predict c)


def co_consumed(index: ItemNeighbourIndex, item: int) -> tuple[np.ndarray, np.ndarray]:
    """The items whose neighbour lists hold `item`, and its weight there (B[item, c]): (items, weights)."""
    if item >= index.n_items:  # an item added live is on nobody's list
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    start, end = index.offsets[item], index.offsets[item + 1]
    return index.owners[start:end].astype(np.int64), index.weights[start:end]


def rank_similar(
    item: int,
    candidates: np.ndarray,
    item_embeddings: np.ndarray,
    co_items: np.ndarray,
    co_weights: np.ndarray,
    weights: SimilarityWeights,
    k: int,
    blocked: np.ndarray,
) -> SimilarItems:
    """The k best of `candidates` (FAISS's, -1 padded) and `co_items` for `item` by the blend, `blocked` (the item
    itself, exclusions) left out. Cosines are recomputed for every candidate (those from the co-consumption
    lists have none from the index)."""
    pool = np.unique(np.concatenate([candidates[candidates >= 0].astype(np.int64), co_items]))
    pool = pool[~np.isin(pool, blocked)]
    cosines = (item_embeddings[pool] @ item_embeddings[item]).astype(np.float32)
    co = np.zeros(len(pool), dtype=np.float32)
    if len(co_items) and co_weights.max() > 0:
        at = np.searchsorted(pool, co_items)
        present = (at < len(pool)) & (pool[np.minimum(at, len(pool) - 1)] == co_items)
        co[at[present]] = co_weights[present] / co_weights.max()
    # Nothing known of what follows the item (e.g. one added live): its nearest items by cosine.
    scores = weights.embedding * cosines + weights.co_consumption * co if co.any() else cosines
    best = np.lexsort((pool, -cosines, -scores))[:k]  # ties by cosine, then by index: deterministic
    return SimilarItems(pool[best], scores[best], cosines[best], co[best])
