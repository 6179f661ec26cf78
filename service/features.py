"""Model input features, as pure numpy functions shared by training (`model_export`) and serving.

Keeping one implementation is what rules out training/serving skew: the exporter builds the ranker's
training examples with exactly the functions the service calls per request.

Conventions: item and user *indices* are positions in the bundle's id lists; a history is a user's
interactions oldest first; padding in a history window is -1; categorical value 0 means unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = -1

# Per-candidate features the ranker sees after the item's own dense features, in this order.
RANKER_CONTEXT_FEATURES = ("retrieval_score", "item_log_popularity", "content_affinity", "log_history_length")


def history_window(history: np.ndarray, length: int) -> np.ndarray:
    """The latest `length` items of one history, oldest first, right-padded with -1. (length,) int64"""
    window = np.full(length, PAD, dtype=np.int64)
    recent = history[-length:] if length > 0 else history[:0]
    window[: len(recent)] = recent
    return window


def history_windows(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """`history_window` for a batch. (B, length) int64"""
    out = np.full((len(histories), length), PAD, dtype=np.int64)
    for row, history in enumerate(histories):
        recent = history[-length:]
        out[row, : len(recent)] = recent
    return out


def content_profiles(item_dense: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Mean dense content vector of the items in each history window (zeros for an empty one). (B, D) float32"""
    mask = windows >= 0  # (B, L)
    gathered = item_dense[np.where(mask, windows, 0)] * mask[..., None]  # (B, L, D)
    counts = np.maximum(mask.sum(axis=1, keepdims=True), 1)  # (B, 1)
    profiles: np.ndarray = (gathered.sum(axis=1) / counts).astype(np.float32)
    return profiles


def ranker_dense_features(
    item_dense: np.ndarray,
    retrieval_score: np.ndarray,
    item_log_popularity: np.ndarray,
    profile: np.ndarray,
    history_length: np.ndarray,
) -> np.ndarray:
    """The ranker's dense input: item content, then `RANKER_CONTEXT_FEATURES`. (N, D + 4) float32

    item_dense (N, D); retrieval_score, item_log_popularity, history_length (N,); profile (N, D) or (D,).
    content_affinity is the cosine between the candidate's content and the user's history profile.
    """
    profile = np.broadcast_to(profile, item_dense.shape)
    dot = np.einsum("nd,nd->n", item_dense, profile)
    norms = np.linalg.norm(item_dense, axis=1) * np.linalg.norm(profile, axis=1)
    affinity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    context = np.stack(
        [
            retrieval_score,
            item_log_popularity,
            affinity,
            np.log1p(np.broadcast_to(history_length, retrieval_score.shape).astype(np.float32)),
        ],
        axis=1,
    )  # (N, 4)
    return np.concatenate([item_dense, context], axis=1).astype(np.float32)
