"""Stage 3: business rules. Pure numpy: drop padding, already-seen items and explicit exclusions."""

from __future__ import annotations

import numpy as np


def filter_candidates(items: np.ndarray, scores: np.ndarray, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep candidates that are real (FAISS pads with -1) and not in `blocked`, in their original order.

    items (n,) int64, scores (n,) float32, blocked (m,) int64 -> (kept items, their scores)
    """
    keep = items >= 0
    if len(blocked):
        keep &= ~np.isin(items, blocked)
    return items[keep], scores[keep]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties keep the earlier position. (min(k, n),) int64"""
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))].astype(np.int64)


def popularity_order(log_popularity: np.ndarray, recent_popularity: np.ndarray) -> np.ndarray:
    """Every item, most popular first (ties: recently popular first, then the lower index). (n,) int64"""
    return np.lexsort((np.arange(len(log_popularity)), -recent_popularity, -log_popularity)).astype(np.int64)


def most_popular(order: np.ndarray, blocked: np.ndarray, k: int) -> np.ndarray:
    """The first k items of `order` (popularity_order) not in `blocked`: the most-popular baseline. (<= k,) int64"""
    head = order[: k + len(blocked)]
    if len(blocked):
        head = head[~np.isin(head, blocked)]
    return head[:k]
