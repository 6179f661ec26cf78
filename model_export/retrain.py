"""Scheduled retraining with a quality gate: `python -m model_export retrain --database URL --bundles DIR`.

1. Everything the database holds is read (as `train --database`: imported data, every event since, live items).
2. The most recent events are held out by time: the latest `holdout_fraction` of them, and never any event the
   published bundle was trained on (its data window is in the registry). Too few users with held-out positives
   (`min_users`): nothing to judge on, the run is recorded as `skipped`.
3. The gate: the same recipe (preset, settings) trained on the events before the cut is scored against the published
   bundle on the held-out positives, each bundle through the service's pipeline (service.recommend.pipeline) as the
   service would serve it at the cut: the events after a bundle's own data window are its user's fresh events
   (history, and never recommended). NDCG@10 and Recall@10 per user, compared paired (model_export.gate): the
   candidate passes unless it is worse with confidence (a bootstrap interval over users) by more than `margin` of
   the published bundle's mean on either. No published bundle: it passes (`first`).
4. The bundle itself is that recipe trained on everything (what is served learns from all the data), reusing the
   gate's model selection (`build_bundle(reuse=...)`: its model-selection towers score the ranker's examples on
   the events they never saw, each user's held-out part of the gate's split and everything after the cut; the
   two-tower model is refitted once on everything): registered with both scores and published if the gate passed
   (the `current` link re-pointed too), else `rejected`.
Every run, whatever its end, is recorded in the registry's `retrains` table (service.store.registry).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from model_export.config import ExportConfig
from model_export.data import Dataset, Interactions
from model_export.evaluate import recommend_all
from model_export.gate import MARGIN, judge
from service.core.bundle import load_bundle
from service.recommend.pipeline import Pipeline, Query
from service.store import registry
from service.store.schema import migrate, open_engine

log = logging.getLogger(__name__)

K = 10


@dataclass(frozen=True)
class RetrainResult:
    result: str  # published | rejected | skipped
    version: str | None
    candidate: dict[str, float] | None  # the gate's scores (means) of the recipe trained before the cut
    published: dict[str, float] | None  # ... of the bundle published when the run began (None: there was none)
    published_version: str | None
    message: str
    seconds: float


def data_window(interactions: Interactions, n_users: int, n_items: int) -> dict[str, Any]:
    ts = interactions.timestamp
    return {
        "first": int(ts.min()) if len(ts) else None,
        "last": int(ts.max()) if len(ts) else None,
        "events": len(interactions),
        "users": n_users,
        "items": n_items,
    }


def held_out(dataset: Dataset, cut: int, min_rating: float) -> dict[str, list[str]]:
    """Per user id, the items of their positive events at or after `cut` that they had not met before it."""
    x = dataset.interactions
    before = x.timestamp < cut
    met = set(zip(x.user[before].tolist(), x.item[before].tolist(), strict=True))
    later = np.flatnonzero(~before & (x.rating >= min_rating))
    out: dict[str, list[str]] = {}
    for row in later[np.argsort(x.timestamp[later], kind="stable")]:
        u, i = int(x.user[row]), int(x.item[row])
        if (u, i) not in met:
            items = out.setdefault(dataset.user_ids[u], [])
            if dataset.item_ids[i] not in items:
                items.append(dataset.item_ids[i])
    return out


def score_bundle(
    path: Path,
    dataset: Dataset,
    cut: int,
    relevant: dict[str, list[str]],
    known_until: int | None,
    config: ExportConfig,
) -> dict[str, np.ndarray]:
    """Per-user NDCG@10 and Recall@10 ((U,) each, in `relevant`'s order) of the bundle at `path` on `relevant`
    (user id -> held-out item ids), through the service's pipeline; each user's events in [known_until, cut)
    (those the bundle was not trained on) are given as fresh events, as the service reads them from the
    database."""
    bundle = load_bundle(path)
    pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0)
    x = dataset.interactions
    fresh_rows = np.flatnonzero(
        (x.timestamp < cut) & (x.timestamp >= (known_until if known_until is not None else cut))
    )
    fresh_rows = fresh_rows[np.argsort(x.timestamp[fresh_rows], kind="stable")]
    fresh: dict[str, tuple[list[int], list[int]]] = {}
    for row in fresh_rows:
        index = bundle.item_index.get(dataset.item_ids[int(x.item[row])])
        if index is None:
            continue
        liked, disliked = fresh.setdefault(dataset.user_ids[int(x.user[row])], ([], []))
        (liked if x.rating[row] >= config.min_rating else disliked).append(index)
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    queries = []
    for user_id in relevant:
        user = bundle.user_index.get(user_id, -1)
        liked, disliked = fresh.get(user_id, ([], []))
        history = pipeline.history(user, np.array(liked, dtype=np.int64))
        exclude = np.array(disliked, dtype=np.int64)
        # Embedding None: encoded from `history` in the batch, as the service encodes a user with fresh events.
        queries.append(Query(user, None, K, max(pipeline.depth(user), K), exclude=exclude, history=history))
    ndcg, recall = [], []
    for items, recs in zip(relevant.values(), recommend_all(pipeline, queries), strict=True):
        top = [bundle.item_ids[int(i)] for i in recs.items]
        hits = np.array([item in items for item in top] + [False] * (K - len(top)), dtype=np.float64)
        ndcg.append(float((hits * discounts).sum() / discounts[: min(len(items), K)].sum()))
        recall.append(float(hits.sum() / len(items)))
    return {f"ndcg@{K}": np.array(ndcg), f"recall@{K}": np.array(recall)}


def means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The per-user scores' means, and how many users: what the registry and the run's message record."""
    return {metric: float(values.mean()) for metric, values in scores.items()} | {"users": len(scores[f"ndcg@{K}"])}


def retrain(
    url: str,
    bundles_dir: Path,
    config: ExportConfig,
    *,
    margin: float = MARGIN,
    holdout_fraction: float = 0.1,
    min_users: int = 20,
    progress: bool = False,
    training_data: Callable[[Dataset], Dataset] | None = None,
) -> RetrainResult:
    """One run (see the module's doc). `training_data`: what the models are trained on, given the database's
    dataset (default: itself); the gate scores on the database's own events whatever it returns (a test trains
    a deliberately worse model this way)."""
    started = time.time()
    migrate(url)
    engine = open_engine(url, 30.0)
    try:
        try:
            result = _retrain(
                engine, url, bundles_dir, config, margin, holdout_fraction, min_users, progress, training_data
            )
        except Exception as e:
            registry.record_retrain(engine, started, "failed", None, f"{type(e).__name__}: {e}")
            raise
        registry.record_retrain(engine, started, result.result, result.version, result.message)
        return result
    finally:
        engine.dispose()


def _retrain(
    engine: sa.Engine,
    url: str,
    bundles_dir: Path,
    config: ExportConfig,
    margin: float,
    holdout_fraction: float,
    min_users: int,
    progress: bool,
    training_data: Callable[[Dataset], Dataset] | None,
) -> RetrainResult:
    from model_export.build import build_bundle  # torch: imported once there is something to train
    from model_export.database import load_database

    started = time.time()
    train_on = training_data or (lambda d: d)
    dataset = load_database(url, name="database")
    x = dataset.interactions
    if not len(x):
        return RetrainResult("skipped", None, None, None, None, "the database holds no interactions", 0.0)
    current = registry.published(engine)
    cut = int(np.quantile(x.timestamp, 1.0 - holdout_fraction)) if len(x) > 1 else int(x.timestamp.max()) + 1
    known_until = None
    if current is not None and current.data_window.get("last") is not None:
        known_until = int(current.data_window["last"]) + 1
        cut = max(cut, known_until)  # never judge a bundle on events it was trained on
    relevant = held_out(dataset, cut, config.min_rating)
    if len(relevant) < min_users:
        message = f"{len(relevant)} users with held-out positives after the cut (at least {min_users} needed)"
        return RetrainResult("skipped", None, None, None, None, message, time.time() - started)

    scratch = Path(tempfile.mkdtemp(prefix="reco-gate-"))
    try:
        before = dataset.interactions.take(np.flatnonzero(dataset.interactions.timestamp < cut))
        gate_data = train_on(replace(dataset, interactions=before))
        # Each bundle validates itself (evaluate_bundle) to serve the ordering best on its own validation split, as
        # a bundle built by `train` does: the gate judges what would be served.
        gate = build_bundle(gate_data, config, scratch, progress=progress, make_current=False)
        candidate = score_bundle(gate.path, dataset, cut, relevant, None, config)
        published_scores = None
        if current is not None:
            path = bundles_dir / current.version
            if path.is_dir():
                published_scores = score_bundle(path, dataset, cut, relevant, known_until, config)
            else:
                log.warning(
                    "the published bundle %s is not under %s: the gate passes unjudged", current.version, bundles_dir
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ok, comparisons = (True, []) if published_scores is None else judge(candidate, published_scores, margin)
    gate_result = "first" if published_scores is None else ("passed" if ok else "failed")
    cand, pub = means(candidate), None if published_scores is None else means(published_scores)
    # The gate's build is this recipe's model selection on the events before the cut: the bundle reuses it (its
    # model-selection towers score the ranker's examples on the events they never saw; one refit on everything),
    # one two-tower training instead of three.
    final = build_bundle(train_on(dataset), config, bundles_dir, progress=progress, make_current=ok, reuse=gate.fitted)
    metrics = {
        "cut": cut,
        "margin": margin,
        "candidate": cand,
        "published": pub,
        "comparisons": [c.as_dict() for c in comparisons],
        "published_version": current.version if current is not None else None,
        "protocol": f"the latest {holdout_fraction:.0%} of events by time (none the published bundle was trained on); "
        f"positives new to the user; top {K} through the service pipeline",
    }
    registry.register(
        engine,
        final.version,
        data_window(x, len(dataset.user_ids), len(dataset.item_ids)),
        metrics,
        gate_result,
        publish=ok,
    )
    message = f"candidate NDCG@10 {cand['ndcg@10']:.4f} Recall@10 {cand['recall@10']:.4f}" + (
        f" vs published {pub['ndcg@10']:.4f} / {pub['recall@10']:.4f}; differences (95 % interval): "
        + ", ".join(f"{c.metric} {c.difference:+.4f} [{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]" for c in comparisons)
        + f"; rejected below -{margin:.0%} of published"
        if pub
        else ""
    )
    return RetrainResult(
        "published" if ok else "rejected",
        final.version,
        cand,
        pub,
        current.version if current is not None else None,
        message,
        time.time() - started,
    )
