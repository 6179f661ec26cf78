"""Stage 2b: candidates from more than one source, merged for the one ranker.

The two-tower ANN search (service.recommend.retrieval) finds items near the user's embedding; more sources add
what it misses: the item-to-item source (the items the bundle's item-item weights, EASE's by default, score highest from
the user's latest items, fresh events included), the transition source (what came next after the user's latest few
items in other users' histories) and the most popular items. Each candidate keeps every source's
score as a ranker feature whichever source brought it (the two-tower score, the item-item sum, popularity: see
service.recommend.features), and the ranker is trained on candidates drawn the same way (model_export.train).
"""

from __future__ import annotations

import numpy as np

from service.recommend.features import TRANSITION_ITEMS, ItemNeighbourIndex, latest_of_windows


class ExtraCandidates:
    """numpy in (a user's history window, their blocked items, the ANN candidates), numpy out (the items the
    other sources add, none already among the ANN candidates or blocked)."""

    def __init__(
        self,
        neighbours: ItemNeighbourIndex,
        popularity: np.ndarray,
        item_item: int,
        popular: int,
        transitions: ItemNeighbourIndex | None = None,
        transition: int = 0,
    ) -> None:
        self.neighbours, self.transitions = neighbours, transitions
        self.item_item, self.popular = item_item, popular
        self.transition = transition if transitions is not None else 0
        # Enough of the most popular items that a user's blocked ones still leave `popular` to take.
        self._popular = np.argsort(-popularity, kind="stable")[: 4 * popular + 64].astype(np.int64)

    def add(self, window: np.ndarray, blocked: np.ndarray, retrieved: np.ndarray) -> np.ndarray:
        """(m,) int64 item indices to rank beside `retrieved`: the item-item source's top from `window`, the
        transition source's from its latest TRANSITION_ITEMS items (what came next after them in other users'
        histories), the most popular; each item once."""
        if not self.item_item and not self.popular and not self.transition:
            return np.zeros(0, dtype=np.int64)
        taken = np.concatenate([blocked, retrieved]).astype(np.int64, copy=False)
        item_item, _ = self.neighbours.top_items(window, self.item_item, taken)
        parts = [item_item]
        if self.transition and self.transitions is not None:
            latest = latest_of_windows(window[None, :], TRANSITION_ITEMS)[0]
            following, _ = self.transitions.top_items(latest, self.transition, np.concatenate([taken, item_item]))
            parts.append(following)
        chosen = np.concatenate(parts)
        popular = self._popular[~np.isin(self._popular, np.concatenate([taken, chosen]))][: self.popular]
        return np.concatenate([chosen, popular])


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
