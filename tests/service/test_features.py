from __future__ import annotations

import numpy as np
import pytest

from service.features import content_profiles, history_window, history_windows, ranker_dense_features
from service.filtering import filter_candidates, top_k


def test_history_window_keeps_latest_oldest_first() -> None:
    assert history_window(np.array([1, 2, 3, 4, 5]), 3).tolist() == [3, 4, 5]
    assert history_window(np.array([7]), 3).tolist() == [7, -1, -1]
    assert history_window(np.array([], dtype=np.int64), 2).tolist() == [-1, -1]
    assert history_windows([np.array([1, 2, 3]), np.array([9])], 2).tolist() == [[2, 3], [9, -1]]


def test_content_profile_ignores_padding() -> None:
    dense = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    profiles = content_profiles(dense, np.array([[0, 2, -1], [-1, -1, -1]]))
    assert profiles.tolist() == [[1.0, 0.5], [0.0, 0.0]]


def test_ranker_dense_features_exact() -> None:
    item_dense = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    out = ranker_dense_features(
        item_dense,
        retrieval_score=np.array([0.5, -0.25], dtype=np.float32),
        item_log_popularity=np.array([1.0, 0.0], dtype=np.float32),
        profile=np.array([1.0, 1.0], dtype=np.float32),
        history_length=np.array([3, 3], dtype=np.float32),
    )
    assert out.dtype == np.float32
    assert out.shape == (2, 6)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.5, 1.0, s, np.log(4)], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 2.0, -0.25, 0.0, s, np.log(4)], rtol=1e-6)
    # An empty profile (no history) has zero affinity rather than NaN.
    zero = ranker_dense_features(
        item_dense,
        np.zeros(2, np.float32),
        np.zeros(2, np.float32),
        np.zeros(2, np.float32),
        np.zeros(2, np.float32),
    )
    assert zero[:, 4].tolist() == [0.0, 0.0]


def test_filter_candidates_drops_padding_seen_and_excluded() -> None:
    items = np.array([5, 3, -1, 8, 1, 3])
    scores = np.array([0.9, 0.8, 0.0, 0.7, 0.6, 0.5], dtype=np.float32)
    kept, kept_scores = filter_candidates(items, scores, np.array([3, 9]))
    assert kept.tolist() == [5, 8, 1]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    kept, _ = filter_candidates(items, scores, np.array([], dtype=np.int64))
    assert kept.tolist() == [5, 3, 8, 1, 3]


def test_top_k_order_and_ties() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]
    assert top_k(np.zeros(0, np.float32), 3).tolist() == []
