"""Offline evaluation: exact full-ranking metrics, bootstrap intervals, and the bundle's own validation.

Protocol (both the bundle's validation and `benchmarks.quality`): each user's held-out positives are the
relevant set; items in the user's training history are excluded from the ranking (as the service excludes
already-seen items); every other catalogue item is a candidate (no sampled negatives). Metrics are means over
users with at least one held-out item. Recommendation lists are (U, depth) item-index arrays, -1 padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from model_export.data import Interactions
from service.core import bundle as files
from service.core.bundle import Bundle
from service.recommend.pipeline import Pipeline, Query, Recommendations
from service.recommend.similar import SimilarityWeights

DEPTH = 100
RECALL_AT = (10, 20, 50, 100)
NDCG_AT = (10, 20)
HIT_AT = 10
COVERAGE_AT = 10


def per_user_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Recall@{10,20,50,100}, NDCG@{10,20} (binary gains) and HitRate@10 of each user. Each (U,) float64.

    recommended (U, D) with D >= 100 (-1 = no item); relevant: U non-empty arrays of item indices.
    """
    n_users = len(relevant)
    hits = np.zeros((n_users, recommended.shape[1]), dtype=np.float64)  # (U, D)
    for row, rel in enumerate(relevant):
        hits[row] = np.isin(recommended[row], rel)
    n_rel = np.array([len(r) for r in relevant], dtype=np.float64)  # (U,)
    out = {f"recall@{k}": hits[:, :k].sum(axis=1) / n_rel for k in RECALL_AT}
    for k in NDCG_AT:
        discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
        ideal = np.array([discounts[: int(min(n, k))].sum() for n in n_rel])
        out[f"ndcg@{k}"] = (hits[:, :k] * discounts).sum(axis=1) / ideal
    out[f"hit_rate@{HIT_AT}"] = (hits[:, :HIT_AT].sum(axis=1) > 0).astype(np.float64)
    return out


def coverage(recommended: np.ndarray, n_items: int, k: int = COVERAGE_AT) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    top = recommended[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items)


def bootstrap_interval(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean, resampling users."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def relevant_sets(heldout: Interactions, n_users: int) -> list[np.ndarray]:
    order = np.argsort(heldout.user, kind="stable")
    users, items = heldout.user[order], heldout.item[order]
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    return [items[bounds[u] : bounds[u + 1]] for u in range(n_users)]


def pad(lists: Sequence[np.ndarray], depth: int) -> np.ndarray:
    out = np.full((len(lists), depth), -1, dtype=np.int64)
    for row, items in enumerate(lists):
        out[row, : min(depth, len(items))] = items[:depth]
    return out


def popularity_recommendations(pipeline: Pipeline, users: np.ndarray, depth: int) -> np.ndarray:
    """The most-popular baseline under the same protocol (seen items excluded), from the bundle's popularity."""
    bundle = pipeline.bundle
    ranked = np.argsort(-bundle.item_log_popularity, kind="stable")
    return pad([ranked[~np.isin(ranked, bundle.seen(int(u)))] for u in users], depth)


BATCH = 256  # users per pipeline call: one user-encoder call, one FAISS search, one ranker call each


def recommend_all(pipeline: Pipeline, queries: Sequence[Query], progress: bool = False) -> list[Recommendations]:
    """`pipeline.recommend_batch` over `queries` in batches of BATCH (each answer as `recommend` gives it alone)."""
    out: list[Recommendations] = []
    starts = range(0, len(queries), BATCH)
    for s in tqdm(starts, desc="ranking", disable=not progress, leave=False, unit="batch"):
        out += pipeline.recommend_batch(queries[s : s + BATCH])
    return out


def pipeline_recommendations(
    pipeline: Pipeline, users: np.ndarray, depth: int, num_candidates: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(retrieval alone, full pipeline) lists for `users`, through ONNX Runtime and FAISS as the service runs."""
    embeddings = pipeline.encode(users)  # (U, E)
    retrieval = pad(pipeline.retrieve(users, embeddings, depth), depth)
    n = max(num_candidates, depth)
    queries = [Query(int(u), embeddings[row], depth, n) for row, u in enumerate(users)]
    full = pad([r.items for r in recommend_all(pipeline, queries, progress)], depth)
    return retrieval, full


NEW_USER_EVENTS = 5
NEW_USERS = 300


def new_user_lists(
    pipeline: Pipeline, users: np.ndarray, depth: int, num_candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pipeline, most popular) lists for `users` as brand-new users would get them: unknown to the bundle, known
    by their first NEW_USER_EVENTS positives as fresh events (the service's path for a new id with events)."""
    bundle = pipeline.bundle
    ranked = np.argsort(-bundle.item_log_popularity, kind="stable")
    starts = [bundle.history(int(u))[:NEW_USER_EVENTS] for u in users]
    n = max(num_candidates, depth)
    # Encoded in the batch from their five events (embedding None), as the service encodes an unknown user.
    full = [r.items for r in recommend_all(pipeline, [Query(-1, None, depth, n, history=e) for e in starts])]
    popular = [ranked[~np.isin(ranked, events)] for events in starts]
    return pad(full, depth), pad(popular, depth)


def users_with_relevant(heldout: Interactions, n_users: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The users with a held-out positive, and each one's relevant items."""
    relevant = relevant_sets(heldout, n_users)
    users = np.array([u for u in range(n_users) if len(relevant[u])], dtype=np.int64)
    return users, [relevant[u] for u in users]


def mean_metrics(recs: np.ndarray, relevant: Sequence[np.ndarray], n_items: int) -> dict[str, float]:
    """per_user_metrics averaged over users, with coverage and the number of users."""
    metrics = {k: float(v.mean()) for k, v in per_user_metrics(recs, relevant).items()}
    return {**metrics, f"coverage@{COVERAGE_AT}": coverage(recs, n_items), "users": len(relevant)}


def evaluate(
    pipeline: Pipeline, heldout: Interactions, num_candidates: int, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Mean metrics of the most-popular baseline, the retrieval stage alone and the full pipeline; and of the
    pipeline and most popular for up to NEW_USERS of those users as brand-new users with NEW_USER_EVENTS events
    (`new_user_pipeline`, `new_user_most_popular`; scored on the same held-out items)."""
    n_users, n_items = pipeline.bundle.manifest.dims.n_users, pipeline.bundle.manifest.dims.n_items
    users, rel = users_with_relevant(heldout, n_users)
    retrieval, full = pipeline_recommendations(pipeline, users, DEPTH, num_candidates, progress)
    lists = {
        "most_popular": popularity_recommendations(pipeline, users, DEPTH),
        "retrieval": retrieval,
        "pipeline": full,
    }
    out = {name: mean_metrics(recs, rel, n_items) for name, recs in lists.items()}
    bundle = pipeline.bundle
    eligible = np.flatnonzero([len(bundle.history(int(u))) >= NEW_USER_EVENTS for u in users])
    rows = np.random.default_rng(0).permutation(eligible)[:NEW_USERS]
    if not len(rows):
        return out
    new_lists = new_user_lists(pipeline, users[rows], DEPTH, num_candidates)
    for name, recs in zip(("new_user_pipeline", "new_user_most_popular"), new_lists, strict=True):
        out[name] = mean_metrics(recs, [rel[r] for r in rows], n_items)
    return out


# How candidates can be ordered (service.recommend.pipeline): the ranker, the gradient-boosted ranker (where the
# bundle has one), or one source's own score alone.
RANKINGS = ("ranker", "gbm", "item_item", "two_tower", "popular")


def choose_ranking(
    bundle: Bundle,
    heldout: Interactions,
    num_candidates: int,
    progress: bool = False,
    ranker: dict[str, float] | None = None,
) -> tuple[str, dict[str, dict[str, float]]]:
    """Each way of ordering the candidates scored on `heldout` through the pipeline as the service runs it
    (known users, seen items excluded): the best by NDCG@10 (a tie goes to the earlier in RANKINGS), and every
    one's metrics. `ranker`: the ranker's row when `evaluate` has scored it already (its `pipeline` row)."""
    n_users, n_items = bundle.manifest.dims.n_users, bundle.manifest.dims.n_items
    users, rel = users_with_relevant(heldout, n_users)
    out: dict[str, dict[str, float]] = {} if ranker is None else {"ranker": ranker}
    rankings = [r for r in RANKINGS if r != "gbm" or files.RANKER_GBM in bundle.manifest.files]
    for ranking in rankings:
        if ranking in out:
            continue
        pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0, ranking=ranking)
        _, full = pipeline_recommendations(pipeline, users, DEPTH, num_candidates, progress)
        out[ranking] = mean_metrics(full, rel, n_items)
    best = max(rankings, key=lambda r: (out[r]["ndcg@10"], -RANKINGS.index(r)))
    return best, out


def choose_depth(
    bundle: Bundle,
    heldout: Interactions,
    ranking: str,
    full: int,
    grid: Sequence[int],
    tolerance: float,
    at_full: dict[str, float],
    progress: bool = False,
) -> tuple[int, dict[int, dict[str, float]]]:
    """The fewest ANN candidates (`full`, or a depth of `grid` below it, at least DEPTH) whose pipeline, ordered
    by `ranking`, keeps NDCG@10 on `heldout` at least (1 - `tolerance`) of `full`'s (`at_full`, its metrics), and
    the metrics of the depths scored: shallowest first, up to the one chosen. Every depth has its
    `candidate_recall`: the share of held-out positives among the ANN's first `depth` candidates (seen items
    excluded), what the ranker can find at that depth."""
    n_users, n_items = bundle.manifest.dims.n_users, bundle.manifest.dims.n_items
    users, rel = users_with_relevant(heldout, n_users)
    pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0, ranking=ranking)
    depths = sorted({full, *(d for d in grid if DEPTH <= d < full)})
    ann = pipeline.retrieve(users, pipeline.encode(users), full)
    out = {
        d: {
            "candidate_recall": float(
                np.mean([np.isin(r, a[:d]).sum() / len(r) for a, r in zip(ann, rel, strict=True)])
            )
        }
        for d in depths
    }
    out[full] |= at_full
    floor = (1 - tolerance) * at_full["ndcg@10"]
    for depth in depths[:-1]:
        _, lists = pipeline_recommendations(pipeline, users, DEPTH, depth, progress)
        out[depth] |= mean_metrics(lists, rel, n_items)
        if out[depth]["ndcg@10"] >= floor:
            return depth, out
    return full, out


# What int8 may serve (model_export.build, ExportConfig.serve_int8), fastest first: both per-request models, the
# ranker alone (most of the time per request), the user tower alone.
INT8_CHOICES: tuple[tuple[str, ...], ...] = (("user_tower", "ranker"), ("ranker",), ("user_tower",))


def choose_int8(
    bundle: Bundle,
    heldout: Interactions,
    ranking: str,
    depth: int,
    tolerance: float,
    at_fp32: dict[str, float],
    progress: bool = False,
) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """The models to serve in int8 on the CPU: the first of INT8_CHOICES whose pipeline (ordered by `ranking`, from
    `depth` ANN candidates, those models' int8 variants) keeps NDCG@10 on `heldout` at least (1 - `tolerance`) of
    float32's (`at_fp32`, its metrics), else none; and the metrics of each choice tried (by "+"-joined models).
    Under an ordering that does not call the ranker (a source alone, the gradient-boosted ranker), the ranker's
    precision changes nothing: only the user tower is tried."""
    n_users, n_items = bundle.manifest.dims.n_users, bundle.manifest.dims.n_items
    users, rel = users_with_relevant(heldout, n_users)
    floor = (1 - tolerance) * at_fp32["ndcg@10"]
    choices = INT8_CHOICES if ranking == "ranker" else (("user_tower",),)
    out: dict[str, dict[str, float]] = {}
    for models in choices:
        precisions = {m: "int8" if m in models else "fp32" for m in files.FP16_MODELS}
        pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0, ranking=ranking, precisions=precisions)
        _, lists = pipeline_recommendations(pipeline, users, DEPTH, depth, progress)
        out["+".join(models)] = metrics = mean_metrics(lists, rel, n_items)
        if metrics["ndcg@10"] >= floor:
            return models, out
    return (), out


# Share of co-consumption in the similar-items blend (service.recommend.similar), chosen on validation.
SIMILAR_CO_CONSUMPTION_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SIMILAR_K = 10
SIMILAR_QUERIES = 2000


def next_items(earlier: Interactions, later: Interactions, n_items: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Next-item prediction for similar items: each user's positives in time order (`earlier`, then `later`);
    every consecutive pair (a, b) whose b is in `later` says "after a, this user liked b". Returns the query
    items a (Q,) and, for each, the distinct items liked right after it."""
    user = np.r_[earlier.user, later.user]
    item = np.r_[earlier.item, later.item]
    is_later = np.r_[np.zeros(len(earlier), bool), np.ones(len(later), bool)]
    order = np.lexsort((np.r_[earlier.timestamp, later.timestamp], is_later, user))
    user, item, is_later = user[order], item[order], is_later[order]
    pair = (user[1:] == user[:-1]) & is_later[1:] & (item[1:] != item[:-1])
    codes = np.unique(item[:-1][pair].astype(np.int64) * n_items + item[1:][pair])
    queries, starts = np.unique(codes // n_items, return_index=True)
    return queries, np.split(codes % n_items, starts[1:])


def similar_item_metrics(
    pipeline: Pipeline, queries: np.ndarray, relevant: Sequence[np.ndarray], weights: SimilarityWeights
) -> dict[str, float]:
    """Recall@10 and NDCG@10 of `pipeline.similar` (with `weights`) per query item, averaged over the queries."""
    lists = pad([pipeline.similar(int(q), SIMILAR_K, weights=weights).items for q in queries], DEPTH)
    per_query = per_user_metrics(lists, relevant)
    return {m: round(float(per_query[m].mean()), 4) for m in (f"recall@{SIMILAR_K}", f"ndcg@{SIMILAR_K}")}


def choose_similarity(
    pipeline: Pipeline, earlier: Interactions, later: Interactions, seed: int = 0
) -> dict[str, Any] | None:
    """The co-consumption share of the similar-items blend with the best next-item NDCG@10 on `later` (held
    out), each share's metrics beside it; None when `later` holds no next-item pair."""
    queries, relevant = next_items(earlier, later, pipeline.bundle.manifest.dims.n_items)
    if not len(queries):
        return None
    rows = np.sort(np.random.default_rng(seed).permutation(len(queries))[:SIMILAR_QUERIES])
    queries, relevant = queries[rows], [relevant[r] for r in rows]
    grid = {
        share: similar_item_metrics(pipeline, queries, relevant, SimilarityWeights(1.0 - share, share))
        for share in SIMILAR_CO_CONSUMPTION_GRID
    }
    best = max(grid, key=lambda share: (grid[share][f"ndcg@{SIMILAR_K}"], -share))
    return {
        "co_consumption_share": best,
        "validation": {
            "protocol": "next-item prediction: for each query item, the items users liked right after it in the "
            "held-out part; per query item, averaged",
            "queries": len(queries),
            "by_co_consumption_share": {f"{share:g}": metrics for share, metrics in grid.items()},
        },
    }
