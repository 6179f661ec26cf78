"""Stage 2b: candidates from more than one source, merged for the one ranker.

The two-tower ANN search (service.recommend.retrieval) finds items near the user's embedding; two more sources add
what it misses: the item-to-item source (the items the bundle's item-item weights, EASE's by default, score highest from
the user's latest items, fresh events included) and the most popular items. Each candidate keeps every source's
score as a ranker feature whichever source brought it (the two-tower score, the item-item sum, popularity: see
service.recommend.features), and the ranker is trained on candidates drawn the same way (model_export.train).
"""

from __future__ import annotations

import numpy as np

from service.recommend.features import ItemNeighbourIndex


class ExtraCandidates:
    """numpy in (a user's history window, their blocked items, the ANN candidates), numpy out (the items the
    other sources add, none already among the ANN candidates or blocked)."""

    def __init__(self, neighbours: ItemNeighbourIndex, popularity: np.ndarray, item_item: int, popular: int) -> None:
        self.neighbours = neighbours
        self.item_item, self.popular = item_item, popular
        # Enough of the most popular items that a user's blocked ones still leave `popular` to take.
        self._popular = np.argsort(-popularity, kind="stable")[: 4 * popular + 64].astype(np.int64)

    def add(self, window: np.ndarray, blocked: np.ndarray, retrieved: np.ndarray) -> np.ndarray:
        """(m,) int64 item indices to rank beside `retrieved`."""
        if not self.item_item and not self.popular:
            return np.zeros(0, dtype=np.int64)
        taken = np.concatenate([blocked, retrieved]).astype(np.int64, copy=False)
        item_item, _ = self.neighbours.top_items(window, self.item_item, taken)
        popular = self._popular[~np.isin(self._popular, np.concatenate([taken, item_item]))][: self.popular]
        return np.concatenate([item_item, popular])


def merge(
    retrieved: np.ndarray, retrieved_scores: np.ndarray, extra: np.ndarray, embedding: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ANN candidates followed by the other sources' (`extra`), each with its two-tower score (the inner
    product of the user's embedding and the item's, which the ANN search gives for its own). `items`: the item
    embeddings (I, E). ((n + m,) int64, (n + m,) float32)"""
    if not len(extra):
        return retrieved, retrieved_scores
    scores = (items[extra] @ embedding).astype(np.float32)
    return np.concatenate([retrieved, extra]), np.concatenate([retrieved_scores, scores])
