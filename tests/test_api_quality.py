"""What is served is what is measured: `benchmarks.api_quality` in small, as CI's quality gate.

The bundle is built by the CLI from a MovieLens-layout copy of the training part, served by `python -m service` and
asked over HTTP, as a user would run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.api_quality import run
from model_export.config import preset
from model_export.data import generate_synthetic, load_movielens
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


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_service_through_the_api_beats_most_popular_on_ml100k(tmp_path: Path) -> None:
    report = run(load_movielens(ML100K), tmp_path, source=ML100K, layout="same", new_users=100)
    known, checks = report["known_users"], report["checks"]
    assert checks["returned_seen_items"] == 0
    assert checks["fallbacks_for_known_users"] == 0
    for metric in ("ndcg@10", "recall@10", "hit_rate@10"):
        assert known["service"][metric]["mean"] > known["most_popular"][metric]["mean"], metric
