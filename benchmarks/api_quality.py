"""Quality as a user gets it: the bundle built by the CLI, served by `python -m service`, asked over HTTP.

    python -m benchmarks.api_quality --data-dir ../shared/data/ml-100k [--layout same|csv] [--new-users 300]
    python -m benchmarks.api_quality --data-dir ../shared/data/ml-100k --layout csv --users-fraction 0.5 --name half
    python -m benchmarks.api_quality --data-dir ../shared/data/amazon-sports       # a log in the data contract
    python -m benchmarks.api_quality --data-dir ../shared/data/amazon-sports --first-users 1500 --name first1500
    python -m benchmarks.api_quality --synthetic --preset tiny     # the small version CI runs (tests/)

Protocol: every user's interactions (all ratings) are split by time, the earliest 80 % for training, the latest
20 % held out. The training part is written as a MovieLens download in a temporary directory (`same`: the
source's ml-100k files, user features included; `csv`: `ratings.csv` + `movies.csv`, no user features) and
`python -m model_export --dataset movielens --data-dir COPY --out BUNDLES` builds the bundle exactly as a user
would (its defaults: settings selected on its own validation split, then refitted on everything given). The
service is started on a free port and every test user (one with a held-out positive, rating >= 4, that they had
not rated before) is asked `POST /v1/recommendations` with k=10. A directory in the data contract
(`interactions.csv`, and `items.csv` if it has one) is copied as contract files and built with `python -m
model_export train --interactions F` (`--items`, `--users` only where they hold text or attributes), as a team
with such a log would; an interaction without a rating is a positive.

Baselines (most popular, ItemKNN, ALS, BPR, EASE) are fitted on the same 80 % in the same run; each one's settings
(its input: positives or every rating; EASE's lambda, ItemKNN's neighbours) are chosen on a validation split of
that 80 % (its latest 20 % per user), never on the test part, then refitted on the whole 80 %. Every item in the
user's training data is removed from every list, the service's included (which it must do itself: any such item
it returns is counted).

New users: for `--new-users` test users, their first five training positives are posted as `like` events under a
new user id, then that id is asked for recommendations, scored on the same held-out positives; against most
popular and ItemKNN / EASE folded in from the same five items.

Beyond accuracy, for the service and every baseline: catalogue coverage@10 and the mean popularity of the items
recommended. `--users-fraction` makes a sparser shape of the same data (a random share of the users, every item
kept: a catalogue larger than the user base, many items with few ratings).

The baselines' lists are kept in `--cache` (benchmarks/.cache) under a digest of the training part, the users
and the settings, and read back by the next run on the same data. Writes <out>/api_quality[-<name>].{md,json}
and a bar plot (.png).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.serve import Server
from model_export.baselines import ALS, BPR, EASE, Baseline, ItemKNN, MostPopular, interaction_matrix, top_unseen
from model_export.config import preset
from model_export.contract import load_contract, write_contract
from model_export.data import (
    Dataset,
    Interactions,
    generate_synthetic,
    load_movielens,
    positives,
    temporal_split,
    unseen,
    write_movielens_csv,
)
from model_export.evaluate import DEPTH, bootstrap_interval, per_user_metrics, relevant_sets

K = 10
MIN_RATING = 4.0
METRICS = ("ndcg@10", "recall@10", "hit_rate@10")
NEW_USER_EVENTS = 5
log = logging.getLogger("api_quality")


@dataclass(frozen=True)
class Split:
    """Indices into the dataset: the training part (all ratings), the held-out relevant sets."""

    train: Interactions
    users: np.ndarray  # (U,) test users: with at least one relevant held-out item
    relevant: list[np.ndarray]  # per test user: held-out positives not in their training data
    validation: tuple[Interactions, Interactions]  # (inner train, inner held-out positives) of `train`


def make_split(dataset: Dataset, test_fraction: float = 0.2) -> Split:
    train, test = temporal_split(dataset.interactions, test_fraction)
    relevant_all = relevant_sets(
        unseen(positives(test, dataset.n_items, MIN_RATING), train, dataset.n_items), dataset.n_users
    )
    users = np.array([u for u in range(dataset.n_users) if len(relevant_all[u])], dtype=np.int64)
    inner_train, inner_test = temporal_split(train, test_fraction)
    inner_relevant = unseen(positives(inner_test, dataset.n_items, MIN_RATING), inner_train, dataset.n_items)
    return Split(train, users, [relevant_all[u] for u in users], (inner_train, inner_relevant))


def write_copy(
    dataset: Dataset,
    train: Interactions,
    source: Path | None,
    layout: str,
    directory: Path,
    drop_items: np.ndarray | None = None,
) -> None:
    """The training part as a MovieLens download: `same` (ml-100k: u.data of the training ratings beside the
    source's u.item and u.user) or `csv` (ratings.csv + movies.csv). `drop_items`: item indices left out of the
    item file (their ratings must not be in `train`): items the bundle will not know."""
    directory.mkdir(parents=True)
    dropped = np.zeros(0, np.int64) if drop_items is None else drop_items
    if layout == "contract":
        write_contract(replace(dataset, interactions=train), directory)
        return
    if layout == "csv":
        write_movielens_csv(dataset, train, directory, np.setdiff1d(np.arange(dataset.n_items), dropped))
        return
    if source is None or not (source / "u.data").is_file():
        raise SystemExit("--layout same needs an ml-100k source directory (u.data); use --layout csv")
    users = set(dataset.user_ids)  # a subsample's users only
    with (source / "u.user").open(encoding="latin-1") as f, (directory / "u.user").open("w", encoding="latin-1") as out:
        out.writelines(line for line in f if line.split("|", 1)[0] in users)
    dropped_ids = {dataset.item_ids[i] for i in dropped}
    with (source / "u.item").open(encoding="latin-1") as f, (directory / "u.item").open("w", encoding="latin-1") as out:
        out.writelines(line for line in f if line.split("|", 1)[0] not in dropped_ids)
    with (directory / "u.data").open("w", encoding="latin-1") as f:
        for u, i, r, t in zip(train.user, train.item, train.rating, train.timestamp, strict=True):
            f.write(f"{dataset.user_ids[u]}\t{dataset.item_ids[i]}\t{int(r)}\t{int(t)}\n")


# --------------------------------------------------------------------------- baselines


def _candidates() -> dict[str, list[tuple[dict[str, Any], Baseline]]]:
    """Each baseline's settings to choose from on validation (the input rule is chosen beside them)."""
    return {
        "most_popular": [({}, MostPopular())],
        "itemknn": [({"neighbours": n}, ItemKNN(n)) for n in (50, 100, 200)],
        "als": [({"factors": 64}, ALS())],
        "bpr": [({"factors": 64}, BPR())],
        "ease": [({"lambda": lam}, EASE(lam)) for lam in (30.0, 100.0, 300.0, 1000.0)],
    }


def _matrix(interactions: Interactions, n_users: int, n_items: int, rule: str) -> sp.csr_matrix:
    chosen = positives(interactions, n_items, MIN_RATING) if rule == "positives" else interactions
    return interaction_matrix(chosen, n_users, n_items)


def _top(model: Baseline, users: np.ndarray, seen: sp.csr_matrix, depth: int = K) -> np.ndarray:
    return np.concatenate(
        [
            top_unseen(model.scores(users[s : s + 1024]), seen, users[s : s + 1024], depth)
            for s in range(0, len(users), 1024)
        ]
    )


def metrics_at_k(lists: np.ndarray, relevant: list[np.ndarray]) -> dict[str, np.ndarray]:
    """per_user_metrics of top-K lists (U, K) (it reads up to depth 100: padded with -1)."""
    padded = np.full((len(lists), DEPTH), -1, dtype=np.int64)
    padded[:, : lists.shape[1]] = lists
    return per_user_metrics(padded, relevant)


def _mean_ndcg(lists: np.ndarray, relevant: list[np.ndarray]) -> float:
    return float(metrics_at_k(lists, relevant)["ndcg@10"].mean())


def fit_baselines(dataset: Dataset, split: Split, seed: int) -> tuple[dict[str, Baseline], dict[str, dict[str, Any]]]:
    """Each baseline with the settings (input rule + parameters) best on the validation split, refitted on the
    whole training part. Returns (name -> fitted model, name -> chosen settings and validation NDCG@10)."""
    n_users, n_items = dataset.n_users, dataset.n_items
    inner_train, inner_heldout = split.validation
    inner_relevant = relevant_sets(inner_heldout, n_users)
    val_users = np.array([u for u in range(n_users) if len(inner_relevant[u])], dtype=np.int64)
    val_seen = interaction_matrix(inner_train, n_users, n_items)
    fitted: dict[str, Baseline] = {}
    chosen: dict[str, dict[str, Any]] = {}
    # Without ratings (or with every rating a positive) both input rules are the same matrix: fitted once.
    rules = ("positives", "all") if len(positives(split.train, n_items, MIN_RATING)) < len(split.train) else ("all",)
    for name, options in _candidates().items():
        best: tuple[float, str, dict[str, Any], Baseline] | None = None
        for rule in rules:
            x = _matrix(inner_train, n_users, n_items, rule)
            for params, model in options:
                model.fit(x, seed)
                score = _mean_ndcg(_top(model, val_users, val_seen), [inner_relevant[u] for u in val_users])
                if best is None or score > best[0]:
                    best = (score, rule, params, model)
        assert best is not None
        score, rule, params, model = best
        model.fit(_matrix(split.train, n_users, n_items, rule), seed)
        fitted[name] = model
        chosen[name] = {"input": rule, **params, "validation_ndcg@10": round(score, 4)}
        log.info("baseline %s: %s", name, chosen[name])
    return fitted, chosen


def cache_key(dataset: Dataset, split: Split, seed: int, cold_rows: np.ndarray) -> str:
    """What the baselines' lists depend on: the training part, the test and new users, the seed, the settings."""
    digest = hashlib.sha256()
    train = split.train
    for array in (train.user, train.item, train.rating, train.timestamp, split.users, cold_rows):
        digest.update(np.ascontiguousarray(array).tobytes())
    options = {name: [params for params, _ in candidates] for name, candidates in _candidates().items()}
    fields = [dataset.name, dataset.n_users, dataset.n_items, seed, K, NEW_USER_EVENTS, options]
    digest.update(json.dumps(fields).encode())
    return digest.hexdigest()[:20]


def baseline_lists(
    dataset: Dataset,
    split: Split,
    seed: int,
    starts: dict[int, np.ndarray],
    cold_rows: np.ndarray,
    cache: Path | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]], float]:
    """The baselines' top K for the test users and for the new users (from their five items alone), the settings
    chosen on validation, and the seconds they took: read from `cache` when it holds them for the same input."""
    path = None if cache is None else cache / f"baselines-{cache_key(dataset, split, seed, cold_rows)}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            known = {n.removeprefix("known:"): stored[n] for n in stored.files if n.startswith("known:")}
            cold = {n.removeprefix("cold:"): stored[n] for n in stored.files if n.startswith("cold:")}
        log.info("baselines read from %s (computed in %.0fs)", path, meta["seconds"])
        return known, cold, meta["chosen"], float(meta["seconds"])
    t0 = time.perf_counter()
    baselines, chosen = fit_baselines(dataset, split, seed)
    seen = interaction_matrix(split.train, dataset.n_users, dataset.n_items)
    lists = {name: _top(model, split.users, seen) for name, model in baselines.items()}
    # Baselines for the new users, from their five items alone.
    events = [starts[int(split.users[r])] for r in cold_rows]
    rows = sp.csr_matrix(
        (
            np.ones(NEW_USER_EVENTS * len(events), np.float32),
            (np.repeat(np.arange(len(events)), NEW_USER_EVENTS), np.concatenate([np.zeros(0, np.int64), *events])),
        ),
        shape=(len(events), dataset.n_items),
    )
    local = np.arange(len(cold_rows))
    cold_lists: dict[str, np.ndarray] = {}
    popularity = baselines["most_popular"].scores(np.zeros(len(cold_rows), dtype=np.int64))
    cold_lists["most_popular"] = top_unseen(np.asarray(popularity), rows, local, K)
    for name in ("itemknn", "ease"):
        model = baselines[name]
        cold_lists[name] = top_unseen(model.fold_in(rows), rows, local, K)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"known:{n}": a for n, a in lists.items()} | {f"cold:{n}": a for n, a in cold_lists.items()}
        np.savez(path, meta=np.array(json.dumps({"chosen": chosen, "seconds": seconds})), **arrays)
    return lists, cold_lists, chosen, seconds


# --------------------------------------------------------------------------- the service over HTTP


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        answer: dict[str, Any] = json.loads(r.read())
    return answer


def recommended(server: Server, index: dict[str, int], user_id: str) -> tuple[np.ndarray, str | None]:
    """The service's top K for `user_id` as dataset indices (-1 padded; -2 for an id the data does not have),
    and its fallback."""
    answer = post(server.url + "/v1/recommendations", {"user_id": user_id, "k": K})
    items = [index.get(item["item_id"], -2) for item in answer["items"]]
    return np.array(items + [-1] * (K - len(items)), dtype=np.int64), answer["fallback"]


def first_positives(train: Interactions, n_items: int, users: np.ndarray, count: int) -> dict[int, np.ndarray]:
    """Each user's first `count` positives of the training part, by time: (user -> (count,) items, oldest first)."""
    pos = positives(train, n_items, MIN_RATING)  # sorted by user then time
    out: dict[int, np.ndarray] = {}
    for u in users:
        items = pos.item[pos.user == u][:count]
        if len(items) == count:
            out[int(u)] = items
    return out


# --------------------------------------------------------------------------- the run


def build_with_cli(
    copy: Path,
    bundles: Path,
    preset_name: str,
    seed: int,
    export_args: tuple[str, ...] = (),
    layout: str = "same",
    dataset: Dataset | None = None,
) -> tuple[dict[str, Any], float]:
    """`python -m model_export` on the copy, as a user runs it: (the bundle's manifest, seconds). A contract
    copy is trained with `train --interactions`, given the items and users tables only where they hold something
    (a log without item text or user attributes is trained on the log alone)."""
    command = [sys.executable, "-m", "model_export", "--dataset", "movielens", "--data-dir", str(copy)]
    if layout == "contract":
        command = [sys.executable, "-m", "model_export", "train", "--interactions", str(copy / "interactions.csv")]
        if dataset is not None and dataset.has_text:
            command += ["--items", str(copy / "items.csv")]
        if dataset is not None and dataset.user_categorical.shape[1]:
            command += ["--users", str(copy / "users.csv")]
    command += ["--out", str(bundles), "--preset", preset_name, "--seed", str(seed), "--no-progress", *export_args]
    t0 = time.perf_counter()
    built = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if built.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({built.returncode}):\n{built.stderr[-4000:]}")
    manifest: dict[str, Any] = json.loads((bundles / "current" / "manifest.json").read_text())
    return manifest, seconds


def summarise(
    lists: dict[str, np.ndarray], relevant: list[np.ndarray], metrics: tuple[str, ...] = METRICS
) -> dict[str, dict[str, Any]]:
    """Each list set's mean of `metrics` with a 95 % bootstrap interval; lists are top-K (U, K) arrays."""
    out: dict[str, dict[str, Any]] = {}
    for name, recs in lists.items():
        per_user = metrics_at_k(recs, relevant)
        out[name] = {}
        for metric in metrics:
            values = per_user[metric]
            lo, hi = bootstrap_interval(values)
            out[name][metric] = {"mean": float(values.mean()), "ci95": [lo, hi]}
    return out


def beyond_accuracy(lists: dict[str, np.ndarray], train: Interactions, n_items: int) -> dict[str, dict[str, float]]:
    """Per list set (top-K (U, K) arrays of item indices, -1 padded): catalogue coverage@K (the share of all items
    recommended to anyone) and the mean popularity of the items recommended (the share of training users who
    rated each, averaged over every slot filled)."""
    users = np.unique(np.stack([train.user, train.item], axis=1), axis=0)
    raters = np.bincount(users[:, 1], minlength=n_items) / max(len(np.unique(train.user)), 1)
    out: dict[str, dict[str, float]] = {}
    for name, recs in lists.items():
        items = recs[recs >= 0]
        out[name] = {
            f"coverage@{K}": float(len(np.unique(items)) / n_items),
            "mean_popularity": float(raters[items].mean()) if len(items) else 0.0,
        }
    return out


def subsample_users(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A sparser shape of the same data: a random `fraction` of the users with all their ratings, every item kept
    (many now with few or no ratings: a catalogue larger than the user base)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(dataset.n_users, size=max(2, round(fraction * dataset.n_users)), replace=False))
    return keep_users(dataset, keep, f"users{fraction:g}")


def keep_users(dataset: Dataset, keep: np.ndarray, suffix: str) -> Dataset:
    """`dataset` with the users `keep` (sorted indices) and all their interactions; every item kept."""
    new_index = np.full(dataset.n_users, -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    x = dataset.interactions
    rows = np.flatnonzero(new_index[x.user] >= 0)
    interactions = replace(x.take(rows), user=new_index[x.user[rows]])
    return replace(
        dataset,
        name=f"{dataset.name}-{suffix}",
        interactions=interactions,
        user_ids=[dataset.user_ids[u] for u in keep],
        user_categorical=dataset.user_categorical[keep],
    )


def run(
    dataset: Dataset,
    work: Path,
    *,
    source: Path | None = None,
    layout: str = "csv",
    preset_name: str = "default",
    new_users: int = 300,
    seed: int = 0,
    server_env: dict[str, str] | None = None,
    export_args: tuple[str, ...] = (),
    cache: Path | None = None,
    bundles: Path | None = None,
) -> dict[str, Any]:
    """The whole measurement in `work` (a scratch directory). Returns the report (JSON-serialisable). `cache`: a
    directory where the baselines' lists are kept and reused for the same data, split and settings. `bundles`:
    where the CLI writes the bundle (default: in `work`); one already there (`current`) is served as it is, not
    rebuilt (to measure server settings on one bundle: it must come from the same data, split and preset)."""
    split = make_split(dataset)
    copy = work / "data"
    bundles = bundles or work / "bundles"
    write_copy(dataset, split.train, source, layout, copy)
    reused = (bundles / "current").exists()
    if reused:
        manifest, train_seconds = json.loads((bundles / "current" / "manifest.json").read_text()), 0.0
        log.info("serving the bundle already in %s (not rebuilt)", bundles)
    else:
        manifest, train_seconds = build_with_cli(copy, bundles, preset_name, seed, export_args, layout, dataset)

    # New users: the first five training positives of a sample of the test users.
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(split.users, size=min(new_users, len(split.users)), replace=False))
    starts = first_positives(split.train, dataset.n_items, sample, NEW_USER_EVENTS)
    cold_rows = np.array([row for row, u in enumerate(split.users) if int(u) in starts], dtype=np.int64)
    lists, cold_lists, chosen, baseline_seconds = baseline_lists(dataset, split, seed, starts, cold_rows, cache)
    seen = interaction_matrix(split.train, dataset.n_users, dataset.n_items)

    env = {"RECO_DEV_MODE": "true", "RECO_ACCESS_LOG": "false", "RECO_LOG_LEVEL": "warning", **(server_env or {})}
    server = Server(bundles / "current", env)
    index = {v: i for i, v in enumerate(dataset.item_ids)}
    try:
        service = np.full((len(split.users), K), -1, dtype=np.int64)
        fallbacks = 0
        t0 = time.perf_counter()
        for row, u in enumerate(split.users):
            service[row], fallback = recommended(server, index, dataset.user_ids[u])
            fallbacks += fallback is not None
        ask_seconds = time.perf_counter() - t0
        # New users: five events, then one request.
        cold_service = np.full((len(cold_rows), K), -1, dtype=np.int64)
        cold_fallbacks = 0
        for j, row in enumerate(cold_rows):
            u = int(split.users[row])
            new_id = f"new-{dataset.user_ids[u]}"
            events = [
                {"user_id": new_id, "item_id": dataset.item_ids[i], "event_type": "like", "timestamp": 1_000_000 + n}
                for n, i in enumerate(starts[u])
            ]
            post(server.url + "/v1/events", {"events": events})
            cold_service[j], fallback = recommended(server, index, new_id)
            cold_fallbacks += fallback is not None
    finally:
        server.stop()

    lists = {"service": service, **lists}
    seen_rows = seen[split.users]
    returned_seen = sum(int(np.isin(service[r], seen_rows[r].indices).sum()) for r in range(len(split.users)))
    unknown = int((service == -2).sum())

    cold_lists = {"service": cold_service, **cold_lists}
    cold_relevant = [split.relevant[r] for r in cold_rows]
    cold_returned = sum(
        int(np.isin(cold_service[j], starts[int(split.users[r])]).sum()) for j, r in enumerate(cold_rows)
    )

    known = summarise(lists, split.relevant)
    cold = summarise(cold_lists, cold_relevant)
    beyond = {
        "known_users": beyond_accuracy(lists, split.train, dataset.n_items),
        "new_users": beyond_accuracy(cold_lists, split.train, dataset.n_items),
    }
    best_known = max((n for n in known if n != "service"), key=lambda n: known[n]["ndcg@10"]["mean"])
    best_cold = max((n for n in cold if n != "service"), key=lambda n: cold[n]["ndcg@10"]["mean"])
    return {
        "meta": {
            "dataset": dataset.name,
            "layout": layout,
            "preset": preset_name,
            "seed": seed,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "split": "per user by time over all ratings: earliest 80 % train, latest 20 % held out; relevant = "
            "held-out ratings >= 4 of items the user had not rated in training",
            "test_users": len(split.users),
            "new_users": len(cold_rows),
            "bundle": manifest["bundle_version"],
            "bundle_fit": manifest["dataset"].get("fit"),
            "bundle_validation_ndcg@10": manifest["metrics"].get("validation", {}).get("pipeline", {}).get("ndcg@10"),
            "bundle_ranking": manifest.get("candidates", {}).get("ranking", "ranker"),
            "bundle_validation_by_ranking": {
                name.removeprefix("ranking="): round(m["ndcg@10"], 4)
                for name, m in manifest["metrics"].get("validation", {}).items()
                if name.startswith("ranking=")
            },
            "train_seconds": round(train_seconds, 1),
            "bundle_reused": reused,
            "train_stage_seconds": manifest.get("training", {}).get("stage_seconds", {}),
            "baseline_seconds": round(baseline_seconds, 1),
            "request_seconds": round(ask_seconds, 1),
            "baseline_settings": chosen,
        },
        "known_users": known,
        "new_users": cold,
        "beyond_accuracy": beyond,
        "checks": {
            "returned_seen_items": returned_seen,
            "returned_unknown_items": unknown,
            "fallbacks_for_known_users": fallbacks,
            "new_user_fallbacks": cold_fallbacks,
            "new_user_returned_own_events": cold_returned,
            "best_baseline": best_known,
            "service_over_best_ndcg@10": known["service"]["ndcg@10"]["mean"] / known[best_known]["ndcg@10"]["mean"],
            "service_over_best_recall@10": known["service"]["recall@10"]["mean"]
            / max(known[n]["recall@10"]["mean"] for n in known if n != "service"),
            "best_new_user_baseline": best_cold,
            "new_user_over_most_popular_ndcg@10": cold["service"]["ndcg@10"]["mean"]
            / cold["most_popular"]["ndcg@10"]["mean"],
            "service_coverage_over_ease": beyond["known_users"]["service"][f"coverage@{K}"]
            / beyond["known_users"]["ease"][f"coverage@{K}"],
        },
    }


def markdown(report: dict[str, Any]) -> str:
    meta, checks = report["meta"], report["checks"]
    lines = [
        f"### Quality through the API ({meta['dataset']}, layout {meta['layout']}, preset {meta['preset']}, "
        f"{meta['date']})",
        "",
        f"{meta['split']}. Bundle `{meta['bundle']}` (fit: {meta['bundle_fit']}) built by the CLI "
        + ("in an earlier run" if meta.get("bundle_reused") else f"in {meta['train_seconds']} s")
        + f", served by `python -m service`, {meta['test_users']} users asked over HTTP "
        f"(k={K}){' with ' + ', '.join(meta['server_settings']) if meta.get('server_settings') else ''}. Mean over "
        "users [95 % bootstrap interval].",
        "",
    ]
    for title, key in (("Known users", "known_users"), (f"New users, {NEW_USER_EVENTS} events each", "new_users")):
        lines += [f"**{title}**" + (f" ({meta['new_users']} users)" if key == "new_users" else ""), ""]
        extra = (f"coverage@{K}", "mean_popularity")
        lines += ["| model | " + " | ".join(METRICS + extra) + " |", "| --- |" + " --- |" * (len(METRICS) + 2)]
        for name, row in report[key].items():
            cells = [f"{row[m]['mean']:.4f} [{row[m]['ci95'][0]:.3f}, {row[m]['ci95'][1]:.3f}]" for m in METRICS]
            cells += [f"{report['beyond_accuracy'][key][name][m]:.4f}" for m in extra]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"- service / best baseline ({checks['best_baseline']}): NDCG@10 {checks['service_over_best_ndcg@10']:.3f}, "
        f"Recall@10 {checks['service_over_best_recall@10']:.3f} (target 1.15)",
        f"- new users: service / most popular NDCG@10 {checks['new_user_over_most_popular_ndcg@10']:.3f} (target 1.3); "
        f"best baseline on five items: {checks['best_new_user_baseline']}",
        f"- coverage@{K}: service / EASE {checks['service_coverage_over_ease']:.3f} (target >= 1); coverage is the "
        "share of the catalogue recommended to anyone, popularity the share of training users who rated an item",
        f"- the bundle orders candidates by: {meta.get('bundle_ranking')} (its validation NDCG@10 by ordering: "
        f"{meta.get('bundle_validation_by_ranking')}); built in {meta['train_seconds']:.0f} s "
        f"(by stage: {meta.get('train_stage_seconds')})",
        f"- items returned that the user had already rated: {checks['returned_seen_items']} (must be 0); "
        f"fallbacks for known users: {checks['fallbacks_for_known_users']}",
        "- baselines' settings, chosen on a validation split of the training part: "
        + "; ".join(f"{n} {s}" for n, s in meta["baseline_settings"].items()),
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (title, key) in zip(
        axes, (("known users", "known_users"), ("new users (5 events)", "new_users")), strict=True
    ):
        names = list(report[key])
        means = [report[key][n]["ndcg@10"]["mean"] for n in names]
        errors = np.array(
            [
                [m - report[key][n]["ndcg@10"]["ci95"][0], report[key][n]["ndcg@10"]["ci95"][1] - m]
                for n, m in zip(names, means, strict=True)
            ]
        ).T
        ax.bar(names, means, yerr=errors, color=["C3" if n == "service" else "C0" for n in names])
        ax.set_title(f"NDCG@10 through the API, {title}")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir",
        type=Path,
        help="a MovieLens download, or a directory in the data contract (interactions.csv [items.csv]); never "
        "copied into the project",
    )
    source.add_argument("--synthetic", action="store_true", help="generated data (the preset's size)")
    parser.add_argument(
        "--layout",
        choices=["same", "csv", "contract"],
        help="the copy's layout (default: same for ml-100k, contract for a contract directory, else csv)",
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-users", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="", help="suffix of the result files")
    parser.add_argument(
        "--users-fraction", type=float, default=1.0, help="a sparser variant: this random share of the users"
    )
    parser.add_argument(
        "--serve-ranker",
        action="store_true",
        help="build with `--serve-ranker` (the ranker served, not the ordering best on validation)",
    )
    parser.add_argument("--first-users", type=int, help="a small slice: the first N users of the log (in its order)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="RECO_X=V", help="a setting of the server (repeatable)"
    )
    parser.add_argument(
        "--bundles",
        type=Path,
        help="where the CLI writes the bundle, kept after the run (default: a scratch directory); a bundle already "
        "there is served without rebuilding (same data, split and preset)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("benchmarks/.cache"),
        help="where the baselines' lists are kept for the next run on the same data ('' for none)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.synthetic:
        dataset = generate_synthetic(preset(args.preset).synthetic, seed=args.seed)
        layout = "csv"
    elif (args.data_dir / "interactions.csv").is_file():
        items = args.data_dir / "items.csv"
        dataset = load_contract(
            args.data_dir / "interactions.csv", items if items.is_file() else None, name=args.data_dir.name
        )
        layout = args.layout or "contract"
    else:
        dataset = load_movielens(args.data_dir)
        layout = args.layout or ("same" if (args.data_dir / "u.data").is_file() else "csv")
    if args.users_fraction < 1.0:
        dataset = subsample_users(dataset, args.users_fraction, args.seed)
    if args.first_users is not None:
        dataset = keep_users(dataset, np.arange(min(args.first_users, dataset.n_users)), f"first{args.first_users}")
    with tempfile.TemporaryDirectory(prefix="reco-api-quality-") as work:
        report = run(
            dataset,
            Path(work),
            source=args.data_dir,
            layout=layout,
            preset_name=args.preset,
            new_users=args.new_users,
            seed=args.seed,
            cache=Path(args.cache) if str(args.cache) else None,
            export_args=("--serve-ranker",) if args.serve_ranker else (),
            server_env=dict(kv.split("=", 1) for kv in args.set),
            bundles=args.bundles,
        )
    report["meta"]["server_settings"] = args.set
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "api_quality" + (f"-{args.name}" if args.name else "")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / f"{stem}.png")
    print(f"wrote {args.out}/{stem}.md, .json and .png")


if __name__ == "__main__":
    main()
