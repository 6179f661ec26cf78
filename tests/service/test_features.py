from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.recommend.features import (
    RANKER_CONTEXT_FEATURES,
    ItemNeighbourIndex,
    content_profiles,
    history_similarity,
    history_window,
    history_windows,
    neighbour_scores,
    ranker_dense_features,
)
from service.recommend.filtering import filter_candidates, top_k


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
        item_recent_popularity=np.array([0.25, 0.75], dtype=np.float32),
        profile=np.array([1.0, 1.0], dtype=np.float32),
        history_sim=np.array([[0.9, 0.1], [0.2, -0.3]], dtype=np.float32),
        history_length=np.array([3, 3], dtype=np.float32),
        neighbour=np.array([[0.5, 0.4], [0.0, 0.0]], dtype=np.float32),
    )
    assert out.dtype == np.float32
    assert out.shape == (2, 2 + len(RANKER_CONTEXT_FEATURES))
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.5, 1.0, 0.25, s, 0.9, 0.1, np.log(4), 0.5, 0.4], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 2.0, -0.25, 0.0, 0.75, s, 0.2, -0.3, np.log(4), 0.0, 0.0], rtol=1e-6)
    # An empty profile (no history) has zero affinity rather than NaN.
    z = np.zeros(2, np.float32)
    zero = ranker_dense_features(item_dense, z, z, z, z, np.zeros((2, 2), np.float32), z, np.zeros((2, 2), np.float32))
    assert zero[:, 5].tolist() == [0.0, 0.0]


def test_history_similarity_one_user_and_batch_agree() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [s := 1 / np.sqrt(2), s]], dtype=np.float32)
    window = np.array([0, 1, -1])
    one = history_similarity(emb, np.array([2, 0]), window)
    np.testing.assert_allclose(one, [[s, s], [1.0, 0.5]], rtol=1e-6)
    batch = history_similarity(emb, np.array([2, 0, 1]), np.array([[0, 1, -1], [0, 1, -1], [-1, -1, -1]]))
    np.testing.assert_allclose(batch, [[s, s], [1.0, 0.5], [0.0, 0.0]], rtol=1e-6)


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


def test_neighbour_scores_sum_and_max_over_history_neighbours() -> None:
    neighbours = np.array([[1, 2, -1], [0, -1, -1], [0, 1, -1]], dtype=np.int32)
    weights = np.array([[0.5, 0.25, 0.0], [0.5, 0.0, 0.0], [0.25, 0.75, 0.0]], dtype=np.float32)
    out = neighbour_scores(neighbours, weights, np.array([2, 0, 1, 2]), np.array([1, -1, 0, 1]))
    np.testing.assert_allclose(out[:, 0], np.log1p([1.0, 0.5, 0.5, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], [0.75, 0.5, 0.5, 0.75], rtol=1e-6)
    assert not neighbour_scores(neighbours, weights, np.array([0, 1]), np.array([-1, -1])).any()
    index = ItemNeighbourIndex(neighbours, weights)
    np.testing.assert_allclose(index.scores(np.array([2, 0, 1, 2]), np.array([1, -1, 0, 1])), out, rtol=1e-6)
    assert not index.scores(np.array([0, 1]), np.array([-1, -1])).any()


@pytest.mark.parametrize("seed", range(6))
def test_inverted_neighbour_index_equals_the_definition(seed: int) -> None:
    """Batches of users with unequal groups, empty groups and windows, a candidate twice, history items and
    candidates beyond the index (items added live), rows without neighbours, zero weights."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n_items, k, live = int(rng.integers(1, 60)), int(rng.integers(0, 8)), 3
        neighbours = rng.integers(-1, n_items, size=(n_items, k)).astype(np.int32)
        weights = rng.random((n_items, k)).astype(np.float32) * (neighbours >= 0) * (rng.random((n_items, k)) > 0.2)
        n_users = int(rng.integers(1, 5))
        windows = rng.integers(-1, n_items + live, size=(n_users, int(rng.integers(1, 7))))
        sizes = rng.integers(0, 12, size=n_users)
        candidates = rng.integers(0, n_items + live, size=int(sizes.sum()))
        rows = np.repeat(np.arange(n_users), sizes)
        # The definition over the catalogue with the live items appended (no neighbours, nobody's neighbour).
        all_neighbours = np.concatenate([neighbours, np.full((live, k), -1, np.int32)])
        all_weights = np.concatenate([weights, np.zeros((live, k), np.float32)])
        expected = neighbour_scores(all_neighbours, all_weights, candidates, windows, rows)
        got = ItemNeighbourIndex(neighbours, weights).scores(candidates, windows, rows)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_item_item_candidates_are_the_items_the_neighbour_sum_scores_highest(seed: int) -> None:
    """ItemNeighbourIndex.top_items (the item-to-item candidate source) against the definition: every item's
    summed weight from the window (neighbour_scores' first column, un-log1p'd), best first, none blocked, none
    scoring zero."""
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n_items, k = int(rng.integers(1, 50)), int(rng.integers(1, 8))
        neighbours = rng.integers(-1, n_items, size=(n_items, k)).astype(np.int32)
        weights = (rng.random((n_items, k)) * (neighbours >= 0)).astype(np.float32)
        window = rng.integers(-1, n_items + 2, size=int(rng.integers(0, 8)))  # padding and live items too
        blocked = rng.integers(0, n_items, size=int(rng.integers(0, 5)))
        n = int(rng.integers(1, 20))
        items, sums = ItemNeighbourIndex(neighbours, weights).top_items(window, n, blocked)
        everything = np.arange(n_items)
        trained = np.where(window < n_items, window, -1)  # items added live have no neighbours
        expected = np.expm1(neighbour_scores(neighbours, weights, everything, trained)[:, 0].astype(np.float64))
        expected[blocked] = 0.0
        assert len(items) <= n
        assert not np.isin(items, blocked).any()
        assert (sums > 0).all()
        np.testing.assert_allclose(sums, expected[items], rtol=1e-5, atol=1e-6)
        assert (np.diff(sums) <= 1e-6).all()  # best first
        # Nothing left out scores more than the last one taken (up to rounding), and a full list takes all.
        left = np.setdiff1d(everything[expected > 1e-6], items)
        if len(left):
            assert len(items) == n
            assert expected[left].max() <= sums[-1] + 1e-5


def test_features_of_several_users_at_once_equal_each_users_alone() -> None:
    rng = np.random.default_rng(3)
    n_items, dim, k = 60, 8, 5
    emb = rng.normal(size=(n_items, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    neighbours = rng.integers(-1, n_items, size=(n_items, k)).astype(np.int32)
    weights = rng.random((n_items, k)).astype(np.float32) * (neighbours >= 0)
    windows = np.array([[3, 7, 9, -1, -1], [-1, -1, -1, -1, -1], [11, 2, 40, 41, 5], [8, -1, -1, -1, -1]])
    sizes = [4, 3, 6, 0]  # unequal groups (padding) and an empty one
    cands = [rng.choice(n_items, size=n, replace=False) for n in sizes]
    rows = np.repeat(np.arange(len(sizes)), sizes)
    together_sim = history_similarity(emb, np.concatenate(cands), windows, rows)
    together_nb = neighbour_scores(neighbours, weights, np.concatenate(cands), windows, rows)
    alone_sim = np.concatenate([history_similarity(emb, c, w) for c, w in zip(cands, windows, strict=True)])
    alone_nb = np.concatenate(
        [neighbour_scores(neighbours, weights, c, w) for c, w in zip(cands, windows, strict=True)]
    )
    per_candidate = history_similarity(emb, np.concatenate(cands), windows[rows])  # training's form
    np.testing.assert_allclose(together_sim, alone_sim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together_sim, per_candidate, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together_nb, alone_nb, rtol=1e-6)
    assert not together_sim[4:7].any()  # the user without history
    assert together_nb[:4].any()
    # Equal groups take the unpadded path: the same answers.
    equal = history_similarity(emb, np.concatenate([cands[0], cands[0]]), windows[[0, 2]], np.repeat([0, 1], 4))
    np.testing.assert_allclose(equal[:4], alone_sim[:4], rtol=1e-5, atol=1e-6)


def test_the_rankers_features_do_not_depend_on_the_window_padding(tiny_bundle: Path) -> None:
    """The ranker trims its windows to the batch's longest history (serving cost by history, not by the
    window's length): every input is the one the full-width window gives, as training computes them (the float
    features up to float32 rounding: their sums run over another width)."""
    from service.core.bundle import load_bundle
    from service.recommend.pipeline import Pipeline

    bundle = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    n_items = bundle.manifest.dims.n_items
    histories = [rng.choice(n_items, size=n, replace=False).astype(np.int64) for n in (3, 1, 0, 7)]
    requests = [
        (u, h, rng.choice(n_items, 20, replace=False), rng.random(20).astype(np.float32))
        for u, h in enumerate(histories)
    ]
    for ranker in (Pipeline.open(bundle, ranking="ranker").ranker, Pipeline.open(bundle, ranking="gbm").gbm):
        assert ranker is not None
        trimmed = ranker.inputs_batch(requests)
        full = ranker.inputs_batch(requests, width=bundle.manifest.dims.history_length)
        assert set(trimmed) == set(full)
        for name in full:
            if np.issubdtype(full[name].dtype, np.floating):  # sums over another width: float32 rounding apart
                np.testing.assert_allclose(trimmed[name], full[name], rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(trimmed[name], full[name], err_msg=name)
