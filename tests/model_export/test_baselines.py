from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from model_export.baselines import ALS, BPR, ItemKNN, MostPopular, interaction_matrix, recommend, top_unseen
from model_export.data import Interactions, stratified_random_split


def matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    items = np.concatenate([np.array(r, dtype=np.int64) for r in rows])
    inter = Interactions(users, items, np.ones(len(items), np.float32), np.arange(len(items)))
    return interaction_matrix(inter, len(rows), n_items)


def test_top_unseen_masks_history_and_pads() -> None:
    seen = matrix([[1], [0, 1, 2]], 4)
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    assert top_unseen(scores, seen, np.array([0, 1]), 3).tolist() == [[2, 3, 0], [3, -1, -1]]


def test_most_popular_and_itemknn_exact() -> None:
    train = matrix([[0, 1], [0, 1], [0, 2], [3]], 4)
    pop = MostPopular()
    pop.fit(train, 0)
    assert recommend(pop, train, np.array([3]), 3).tolist() == [[0, 1, 2]]
    knn = ItemKNN(neighbours=10)
    knn.fit(train, 0)
    # cos(0,1) = 2 / sqrt(3 * 2), cos(0,2) = 1 / sqrt(3)
    np.testing.assert_allclose(knn.sim[0, 1], 2 / np.sqrt(6))
    np.testing.assert_allclose(knn.sim[0, 2], 1 / np.sqrt(3))
    assert knn.sim[0, 0] == 0.0
    assert recommend(knn, train, np.array([2]), 2).tolist() == [[1, 3]]  # item 3 co-occurs with nothing: score 0


@pytest.mark.parametrize("model", [ALS(factors=8, iterations=5), BPR(factors=8, iterations=20)])
def test_factorisation_baselines_run_seeded(model: ALS | BPR) -> None:
    rng = np.random.default_rng(0)
    rows = [sorted(rng.choice(30, size=8, replace=False).tolist()) for _ in range(20)]
    train = matrix(rows, 30)
    model.fit(train, seed=1)
    first = recommend(model, train, np.arange(20), 5)
    assert first.shape == (20, 5)
    for u, row in enumerate(first):
        assert not set(row) & set(rows[u])
    model.fit(train, seed=1)
    assert np.array_equal(first, recommend(model, train, np.arange(20), 5))


def test_stratified_random_split() -> None:
    users = np.repeat([0, 1, 2], [8, 4, 1])
    inter = Interactions(users, np.arange(13), np.ones(13, np.float32), np.arange(13))
    train, test = stratified_random_split(inter, 0.75, seed=3)
    assert np.bincount(train.user, minlength=3).tolist() == [6, 3, 1]
    assert np.bincount(test.user, minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.r_[train.item, test.item].tolist()) == list(range(13))
    again, _ = stratified_random_split(inter, 0.75, seed=3)
    assert np.array_equal(train.item, again.item)
    other, _ = stratified_random_split(inter, 0.75, seed=4)
    assert not np.array_equal(train.item, other.item)


def test_the_cholesky_inverse_is_the_inverse() -> None:
    from model_export.baselines import spd_inverse

    rng = np.random.default_rng(0)
    x = rng.random((300, 60)).astype(np.float32)
    gram = x.T @ x + 10.0 * np.eye(60, dtype=np.float32)
    np.testing.assert_allclose(spd_inverse(gram.copy()), np.linalg.inv(gram.astype(np.float64)), atol=1e-6)
    with pytest.raises(np.linalg.LinAlgError):
        spd_inverse(-np.eye(3, dtype=np.float32))
