"""Stage 4: ranking. Builds the ranker's features (service.features) and runs the ONNX ranker."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service.bundle import Bundle
from service.features import content_profiles, history_similarity, neighbour_scores, ranker_dense_features
from service.user_encoder import check_inputs


class Ranker:
    """numpy in (one user's candidates and retrieval scores), numpy out ((n,) float32 probabilities)."""

    bundle: Bundle  # replaced (never mutated) when items are added live

    def __init__(self, bundle: Bundle, session: ort.InferenceSession) -> None:
        dims = bundle.manifest.dims
        expected = {
            "user_idx": 1,
            "item_idx": 1,
            "user_categorical": len(dims.user_categorical_cardinalities),
            "dense": dims.ranker_dense_dim,
        }
        check_inputs(session, expected, bundle, "ranker.onnx")
        self.bundle = bundle
        self._session = session
        self._output = session.get_outputs()[0].name
        self._oov = dims.n_users
        self._trained_items = dims.n_items  # indices from here on are items added live: the unknown-item row
        self._n_cat = len(dims.user_categorical_cardinalities)

    def inputs(
        self, user: int, window: np.ndarray, candidates: np.ndarray, retrieval_scores: np.ndarray
    ) -> dict[str, np.ndarray]:
        """user: index or -1; window: the user tower's history window (L,); candidates, retrieval_scores (n,)."""
        b = self.bundle
        n = len(candidates)
        history_length = len(b.history(user))
        profile = content_profiles(b.item_dense, window[None, :])[0]  # (D,)
        categorical = b.user_categorical[user] if user >= 0 else np.zeros(self._n_cat, dtype=np.int64)
        dense = ranker_dense_features(
            b.item_dense[candidates],
            retrieval_scores.astype(np.float32),
            b.item_log_popularity[candidates],
            b.item_recent_popularity[candidates],
            profile,
            history_similarity(b.item_embeddings, candidates, window),
            np.full(n, history_length, dtype=np.float32),
            neighbour_scores(b.item_neighbours, b.item_neighbour_weights, candidates, window),
        )
        return {
            "user_idx": np.full(n, user if user >= 0 else self._oov, dtype=np.int64),  # (n,)
            "item_idx": np.minimum(candidates, self._trained_items).astype(np.int64),  # (n,)
            "user_categorical": np.broadcast_to(categorical, (n, self._n_cat)).astype(np.int64),  # (n, U)
            "dense": dense,  # (n, F)
        }

    def score(self, user: int, window: np.ndarray, candidates: np.ndarray, retrieval_scores: np.ndarray) -> np.ndarray:
        return self.score_batch([(user, window, candidates, retrieval_scores)])[0]

    def score_batch(self, requests: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`score` for several users' candidates in one ONNX Runtime call: the rows are concatenated (each row's
        score depends on its own features only) and the output split back. Returns one (n_i,) array each."""
        lengths = [len(r[2]) for r in requests]
        if not sum(lengths):
            return [np.zeros(0, dtype=np.float32) for _ in requests]
        parts = [self.inputs(*r) for r in requests if len(r[2])]
        inputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        out = np.asarray(self._session.run([self._output], inputs)[0], dtype=np.float32).reshape(-1)
        return np.split(out, np.cumsum(lengths)[:-1])
