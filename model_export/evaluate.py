"""Offline evaluation on the temporal hold-out, through the exported bundle exactly as the service runs it.

Protocol: each user's held-out positives (their latest interactions) are the relevant set; items in the
user's training history are excluded from the ranking (as the service excludes already-seen items);
every other catalogue item is a candidate. Metrics are averaged over users with at least one held-out item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from model_export.data import Interactions
from service.pipeline import Pipeline


def ranking_metrics(recommended: Sequence[np.ndarray], relevant: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Recall@k, NDCG@k (binary gains) and HitRate@k, averaged over users. Exact, no sampling."""
    recalls, ndcgs, hits = [], [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    for recs, rel in zip(recommended, relevant, strict=True):
        if len(rel) == 0:
            continue
        gains = np.isin(recs[:k], rel).astype(np.float64)
        n_hit = gains.sum()
        recalls.append(n_hit / len(rel))
        ideal = discounts[: min(len(rel), k)].sum()
        ndcgs.append(float((gains * discounts[: len(gains)]).sum() / ideal))
        hits.append(float(n_hit > 0))
    if not recalls:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0, f"hit_rate@{k}": 0.0, "users": 0}
    return {
        f"recall@{k}": float(np.mean(recalls)),
        f"ndcg@{k}": float(np.mean(ndcgs)),
        f"hit_rate@{k}": float(np.mean(hits)),
        "users": len(recalls),
    }


def relevant_sets(heldout: Interactions, n_users: int) -> list[np.ndarray]:
    order = np.argsort(heldout.user, kind="stable")
    users, items = heldout.user[order], heldout.item[order]
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    return [items[bounds[u] : bounds[u + 1]] for u in range(n_users)]


def popularity_recommendations(pipeline: Pipeline, users: np.ndarray, k: int) -> list[np.ndarray]:
    """The most-popular baseline under the same protocol (seen items excluded)."""
    bundle = pipeline.bundle
    ranked = np.argsort(-bundle.item_log_popularity, kind="stable")
    out = []
    for u in users:
        seen = bundle.history(int(u))
        out.append(ranked[~np.isin(ranked, seen)][:k] if len(seen) else ranked[:k])
    return out


def evaluate(
    pipeline: Pipeline, heldout: Interactions, k: int, num_candidates: int, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Metrics of the most-popular baseline, the retrieval stage alone and the full pipeline."""
    n_users = pipeline.bundle.manifest.dims.n_users
    relevant = relevant_sets(heldout, n_users)
    users = np.array([u for u in range(n_users) if len(relevant[u])], dtype=np.int64)
    rel = [relevant[u] for u in users]
    embeddings = pipeline.encode(users)  # (U, E)
    retrieval = pipeline.retrieve(users, embeddings, k)
    full = [
        pipeline.recommend(int(u), embeddings[row], k, num_candidates).items
        for row, u in enumerate(tqdm(users, desc="evaluating pipeline", disable=not progress, leave=False))
    ]
    return {
        "most_popular": ranking_metrics(popularity_recommendations(pipeline, users, k), rel, k),
        "retrieval": ranking_metrics(retrieval, rel, k),
        "pipeline": ranking_metrics(full, rel, k),
    }
