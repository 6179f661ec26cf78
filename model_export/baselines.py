"""Standard baselines for the quality protocol: most-popular, ItemKNN (cosine), EASE, ALS and BPR (`implicit`).

Each is fitted on the same training interactions as our models and returns, per user, the top `depth`
items not in the user's training history, as a (U, depth) item-index array.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from model_export.data import Interactions


def interaction_matrix(train: Interactions, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary user x item matrix (duplicates collapse to 1)."""
    m = sp.csr_matrix((np.ones(len(train), np.float32), (train.user, train.item)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


def top_unseen(scores: np.ndarray, seen: sp.csr_matrix, users: np.ndarray, depth: int) -> np.ndarray:
    """Top `depth` columns of each row of `scores` (U, I), with the user's seen items removed. (U, depth)"""
    scores = scores.astype(np.float64, copy=True)
    rows = seen[users]
    scores[np.repeat(np.arange(len(users)), np.diff(rows.indptr)), rows.indices] = -np.inf
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(top, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(scores, ranked, axis=1)), ranked, -1)


class Baseline(Protocol):
    name: str

    def fit(self, train: sp.csr_matrix, seed: int) -> None: ...

    def scores(self, users: np.ndarray) -> np.ndarray: ...


class MostPopular:
    name = "most_popular"

    def fit(self, train: sp.csr_matrix, seed: int) -> None:
        self.popularity = np.asarray(train.sum(axis=0)).ravel()

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), len(self.popularity)))


class ItemKNN:
    """Item-based neighbours: cosine similarity of item columns, `neighbours` kept per item; a user's score
    for an item is the sum of its similarities to the items in the user's history."""

    name = "itemknn"

    def __init__(self, neighbours: int = 100) -> None:
        self.neighbours = neighbours

    def fit(self, train: sp.csr_matrix, seed: int) -> None:
        norms = np.sqrt(np.asarray(train.multiply(train).sum(axis=0)).ravel())
        normalised = train.multiply(1.0 / np.maximum(norms, 1e-9)).tocsc()
        sim = (normalised.T @ normalised).toarray()  # (I, I)
        np.fill_diagonal(sim, 0.0)
        if self.neighbours < sim.shape[1]:
            cut = np.argpartition(-sim, self.neighbours, axis=0)[self.neighbours :]
            np.put_along_axis(sim, cut, 0.0, axis=0)
        self.sim = sim
        self.train = train

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.fold_in(self.train[users])

    def fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores of users given only as item rows (U, I), e.g. a new user's few events."""
        return np.asarray(rows @ self.sim)


def ease_weights(x: sp.csr_matrix, regularization: float) -> np.ndarray:
    """EASE's closed form (Steck, WWW 2019): B = argmin ||X - XB||^2 + lambda ||B||^2 with diag(B) = 0, from the
    inverse of X^T X + lambda I. (I, I) float32, B[h, c] the weight of item h towards item c."""
    gram = (x.T @ x).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += regularization
    inverse = spd_inverse(gram)
    weights: np.ndarray = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def spd_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix by its Cholesky factor (LAPACK potrf + potri), in
    float32: 34 s at 18,000 items on 2 cores against 163 s for numpy's float64 `inv` (a Gram matrix plus lambda I
    is well conditioned). (n, n) float32"""
    factor, info = lapack.spotrf(a, lower=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"the matrix is not positive definite (potrf info {info})")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri info {info}")
    lower: np.ndarray = np.tril(inverse)
    full: np.ndarray = lower + np.tril(lower, -1).T  # potri fills the lower triangle only
    return full


class EASE:
    """Embarrassingly shallow autoencoder (Steck, WWW 2019): item-item weights B = argmin ||X - XB||^2 +
    lambda ||B||^2 with diag(B) = 0, in closed form from the inverse of X^T X + lambda I. A user's score for an
    item is their row of X times B; any row works, so a user the fit never saw is scored from their items alone.
    O(items^3): for catalogues of up to some ten thousand items."""

    name = "ease"

    def __init__(self, regularization: float = 100.0) -> None:
        self.regularization = regularization

    def fit(self, train: sp.csr_matrix, seed: int) -> None:
        self.weights = ease_weights(train, self.regularization).astype(np.float32)
        self.train = train

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.fold_in(self.train[users])

    def fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores of users given only as item rows (U, I), e.g. a new user's few events."""
        return np.asarray(rows @ self.weights)


class _ImplicitModel:
    """Shared fit/score for the `implicit` library's factorisation models."""

    name = ""

    def _model(self, seed: int) -> object:
        raise NotImplementedError

    def fit(self, train: sp.csr_matrix, seed: int) -> None:
        from threadpoolctl import threadpool_limits

        # implicit's advice: its own threads, not OpenBLAS's (it warns about the pool size on construction).
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "OpenBLAS is configured to use", RuntimeWarning)
            model = self._model(seed)
            model.fit(train, show_progress=False)  # type: ignore[attr-defined]
        self.user_factors = np.asarray(model.user_factors)  # type: ignore[attr-defined]
        self.item_factors = np.asarray(model.item_factors)  # type: ignore[attr-defined]

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_factors[users] @ self.item_factors.T)


class ALS(_ImplicitModel):
    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 20, alpha: float = 2.0):
        self.params = {"factors": factors, "regularization": regularization, "iterations": iterations, "alpha": alpha}

    def _model(self, seed: int) -> object:
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(**self.params, random_state=seed, num_threads=1)


class BPR(_ImplicitModel):
    name = "bpr"

    def __init__(
        self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01, iterations: int = 200
    ):
        self.params = {
            "factors": factors,
            "learning_rate": learning_rate,
            "regularization": regularization,
            "iterations": iterations,
        }

    def _model(self, seed: int) -> object:
        from implicit.bpr import BayesianPersonalizedRanking

        # One thread: implicit's multi-threaded SGD is not reproducible for a given seed.
        return BayesianPersonalizedRanking(**self.params, random_state=seed, num_threads=1)


def recommend(model: Baseline, train: sp.csr_matrix, users: np.ndarray, depth: int, batch: int = 2048) -> np.ndarray:
    out = [
        top_unseen(model.scores(users[s : s + batch]), train, users[s : s + batch], depth)
        for s in range(0, len(users), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, depth), np.int64)


def all_baselines() -> list[Baseline]:
    return [MostPopular(), ItemKNN(), ALS(), BPR(), EASE()]
