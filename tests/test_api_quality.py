"""What is served is what is measured: `benchmarks.api_quality` in small, as CI's quality gate.

The bundle is built by the CLI from a MovieLens-layout copy of the training part, served by `python -m service` and
asked over HTTP, as a user would run it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.api_quality import (
    NEW_USER_EVENTS,
    baseline_lists,
    beyond_accuracy,
    first_positives,
    make_split,
    run,
    subsample_users,
)
from model_export.config import preset
from model_export.data import Interactions, generate_synthetic, load_movielens
from tests.conftest import ML100K


def test_csv_layout_without_user_features_trains_serves_and_never_returns_seen_items(tmp_path: Path) -> None:
    # The csv layout (ratings.csv + movies.csv) has no user features: the exported towers then take no
    # user_categorical input, which parity and the service must accept.
    config = preset("tiny")
    dataset = generate_synthetic(config.synthetic, seed=0)
    report = run(dataset, tmp_path, layout="csv", preset_name="tiny", new_users=40)
    checks = report["checks"]
    assert report["meta"]["bundle_fit"] == "all"
    assert report["meta"]["test_users"] > 100
    assert checks["returned_seen_items"] == 0  # no item of the user's data (any rating) comes back
    assert checks["returned_unknown_items"] == 0
    assert checks["fallbacks_for_known_users"] == 0  # every training user is known to the served bundle
    # New users: personalised from their events (no fallback), which are never recommended back to them.
    assert report["meta"]["new_users"] > 20
    assert checks["new_user_fallbacks"] == 0
    assert checks["new_user_returned_own_events"] == 0
    assert report["known_users"]["service"]["hit_rate@10"]["mean"] > 0.0
    # Beyond accuracy, for the service and every baseline, known and new users.
    for key in ("known_users", "new_users"):
        assert set(report["beyond_accuracy"][key]) == set(report[key])
        for row in report["beyond_accuracy"][key].values():
            assert 0.0 < row["coverage@10"] <= 1.0
            assert 0.0 < row["mean_popularity"] <= 1.0


def test_coverage_popularity_and_the_sparser_variant() -> None:
    train = Interactions(
        user=np.array([0, 0, 1, 2]),
        item=np.array([0, 1, 0, 0]),
        rating=np.full(4, 5.0, np.float32),
        timestamp=np.arange(4),
    )
    lists = {"a": np.array([[0, 1, -1], [0, -1, -1]]), "b": np.array([[2, -1, -1], [-1, -1, -1]])}
    beyond = beyond_accuracy(lists, train, n_items=4)
    assert beyond["a"] == {"coverage@10": 0.5, "mean_popularity": pytest.approx((1 + 1 / 3 + 1) / 3)}
    assert beyond["b"] == {"coverage@10": 0.25, "mean_popularity": 0.0}
    dataset = generate_synthetic(preset("tiny").synthetic, seed=0)
    half = subsample_users(dataset, 0.5, seed=0)
    assert half.n_users == dataset.n_users // 2
    assert half.item_ids == dataset.item_ids  # every item kept
    x, y = dataset.interactions, half.interactions
    assert set(half.user_ids) <= set(dataset.user_ids)
    assert y.user.max() < half.n_users
    kept = {dataset.user_ids.index(u) for u in half.user_ids}
    assert len(y) == int(np.isin(x.user, list(kept)).sum())  # all of their ratings
    assert {(half.user_ids[u], i) for u, i in zip(y.user, y.item, strict=True)} == {
        (dataset.user_ids[u], i) for u, i in zip(x.user, x.item, strict=True) if u in kept
    }


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_service_through_the_api_beats_most_popular_on_ml100k(tmp_path: Path) -> None:
    report = run(load_movielens(ML100K), tmp_path, source=ML100K, layout="same", new_users=100)
    known, checks = report["known_users"], report["checks"]
    assert checks["returned_seen_items"] == 0
    assert checks["fallbacks_for_known_users"] == 0
    for metric in ("ndcg@10", "recall@10", "hit_rate@10"):
        assert known["service"][metric]["mean"] > known["most_popular"][metric]["mean"], metric


def test_a_log_without_items_is_trained_from_the_log_alone_and_baselines_are_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team's log in the data contract, no items table (no text, no features): `train --interactions` alone
    builds a bundle with text features off; the baselines' lists are kept and read back for the same data."""
    dataset = generate_synthetic(preset("tiny").synthetic, seed=0)
    bare = replace(
        dataset,
        item_titles=list(dataset.item_ids),
        item_dense=np.zeros((dataset.n_items, 0), np.float32),
        item_dense_names=[],
        item_descriptions=None,
        user_categorical=np.zeros((dataset.n_users, 0), np.int64),
        user_categorical_names=[],
        user_categorical_cardinalities=[],
    )
    assert not bare.has_text
    report = run(bare, tmp_path / "run", layout="contract", preset_name="tiny", new_users=40, cache=tmp_path / "c")
    assert report["meta"]["bundle_fit"] == "all"
    assert report["checks"]["returned_seen_items"] == 0
    assert report["checks"]["fallbacks_for_known_users"] == 0
    assert report["known_users"]["service"]["ndcg@10"]["mean"] > 0.0
    cached = list((tmp_path / "c").glob("baselines-*.npz"))
    assert len(cached) == 1

    split = make_split(bare)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(split.users, size=min(40, len(split.users)), replace=False))
    starts = first_positives(split.train, bare.n_items, sample, NEW_USER_EVENTS)
    rows = np.array([r for r, u in enumerate(split.users) if int(u) in starts], dtype=np.int64)

    def refit(*args: object) -> None:
        raise AssertionError("the baselines were fitted again")

    monkeypatch.setattr("benchmarks.api_quality.fit_baselines", refit)
    known, cold, chosen, _ = baseline_lists(bare, split, 0, starts, rows, tmp_path / "c")
    assert set(known) == set(report["known_users"]) - {"service"}
    assert set(cold) == set(report["new_users"]) - {"service"}
    assert chosen == report["meta"]["baseline_settings"]
