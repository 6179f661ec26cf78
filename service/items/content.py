"""Items whose content is a trained item's: the content vector, and the match against the trained items'.

An item's *content vector* is its text embedding (the bundle's pretrained sentence encoder), its categories
(genres, as given) and its release year in decade buckets, each block L2-normalised and weighted so that the
text carries the weight and the year stays a weak feature; the whole vector is L2-normalised. The exporter
stores the trained items' content vectors in the bundle (`item_content.npy`) with the weights it used
(`manifest.content`).

An item added live whose content vector equals trained items' (cosine >= IDENTICAL: the same title, genres and
year, e.g. a trained item PUT again under a new id) takes their place: the mean of their trained embeddings.
Any other item is embedded by the item tower from its content alone (service.items.item_encoder). A softmax-weighted
mean of the nearest trained items by content (`mapped_embeddings`) was measured as the general placement too and
lost to the item tower on cold items (docs/items.md; `python -m benchmarks.cold_placement`
reproduces the comparison).

Pure numpy, shared by the exporter and the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.recommend.features import YEAR_FIRST, YEAR_LAST, year_of

CHUNK = 65_536  # trained items compared at a time (bounds the memory of a search over a large catalogue)
# Content vectors this close are the same content (the bundle stores them in float16: about 1e-3 of rounding).
IDENTICAL = 0.998


@dataclass(frozen=True)
class ContentWeights:
    """How much each block weighs in the content vector (the blocks are unit vectors before weighting)."""

    text: float = 1.0
    categories: float = 0.4
    year: float = 0.15
    year_bucket: int = 10  # years per bucket


def year_buckets(bucket: int) -> int:
    return (YEAR_LAST - YEAR_FIRST) // bucket + 1


def content_dim(text_dim: int, dense_names: Sequence[str], weights: ContentWeights) -> int:
    n_categories = sum(n.startswith("genre:") for n in dense_names)
    has_year = "release_year" in dense_names
    return text_dim + n_categories + (year_buckets(weights.year_bucket) if has_year else 0)


def content_vectors(
    text: np.ndarray, dense: np.ndarray, dense_names: Sequence[str], weights: ContentWeights
) -> np.ndarray:
    """(N, C) float32, L2-normalised (zero rows for items with no content at all).

    text (N, T) sentence embeddings (T may be 0); dense (N, D) the bundle's item dense features, named by
    `dense_names` (`genre:<name>` multi-hot, `release_year` scaled as service.recommend.features.year_feature)."""
    n = len(dense)
    blocks: list[np.ndarray] = []
    if text.shape[1]:
        blocks.append(weights.text * _unit(text.astype(np.float32)))
    categories = [j for j, name in enumerate(dense_names) if name.startswith("genre:")]
    if categories:
        blocks.append(weights.categories * _unit(dense[:, categories].astype(np.float32)))
    if "release_year" in dense_names:
        years = year_of(dense, dense_names)
        known = np.flatnonzero(years > 0)  # an unknown year is no bucket at all
        one_hot = np.zeros((n, year_buckets(weights.year_bucket)), dtype=np.float32)
        one_hot[known, np.clip((years[known] - YEAR_FIRST) // weights.year_bucket, 0, one_hot.shape[1] - 1)] = 1.0
        blocks.append(weights.year * one_hot)
    if not blocks:
        return np.zeros((n, 0), dtype=np.float32)
    return _unit(np.concatenate(blocks, axis=1))


def nearest_by_content(
    queries: np.ndarray, content: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k trained items whose content vectors are closest to each query's (cosine), best first; `exclude`
    (B,) an item index per query to leave out (-1: none). Returns (items (B, k) int64, cosines (B, k) float32).
    The trained content may be float16 (the bundle stores it so); it is compared in float32 a chunk at a time."""
    n_items = len(content)
    k = min(k, n_items - (exclude is not None))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_items = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, n_items, CHUNK):
        sims = queries @ content[start : start + CHUNK].astype(np.float32).T  # (B, chunk)
        if exclude is not None:
            rows = np.flatnonzero((exclude >= start) & (exclude < start + sims.shape[1]))
            sims[rows, exclude[rows] - start] = -np.inf
        items = np.concatenate([best_items, np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)], 1)
        scores = np.concatenate([best_scores, sims], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, 1)
        best_items, best_scores = np.take_along_axis(items, top, 1), np.take_along_axis(scores, top, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_items, order, 1), np.take_along_axis(best_scores, order, 1)


def same_content(neighbours: np.ndarray, cosines: np.ndarray) -> list[np.ndarray]:
    """For each query, the trained items among its `neighbours` (from `nearest_by_content`) whose content it
    has (cosine >= IDENTICAL): usually none. B arrays of int64."""
    return [row[c >= IDENTICAL].astype(np.int64) for row, c in zip(neighbours, cosines, strict=True)]


def mapped_embeddings(
    neighbours: np.ndarray, cosines: np.ndarray, item_embeddings: np.ndarray, temperature: float
) -> np.ndarray:
    """The softmax(cosine / temperature)-weighted mean of the neighbours' trained embeddings, L2-normalised.
    neighbours, cosines (B, k) from `nearest_by_content`; item_embeddings (I, E). (B, E) float32"""
    logits = cosines.astype(np.float64) / temperature
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    mixed = np.einsum("bk,bke->be", weights, item_embeddings[neighbours].astype(np.float64))
    return _unit(mixed.astype(np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit
