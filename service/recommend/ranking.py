"""Stage 4: ranking. Builds the ranker's features (service.recommend.features) and runs the ONNX ranker."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from service.core.bundle import RANKER_GBM, Bundle
from service.core.device import io_binding_device, open_session, run_onnx
from service.recommend.features import (
    GBM_EXTRA_FEATURES,
    ItemNeighbourIndex,
    content_profiles,
    gbm_extra_features,
    history_similarity,
    history_windows,
    ranker_dense_features,
)
from service.recommend.user_encoder import check_inputs, feed


class Ranker:
    """numpy in (one user's history, candidates and retrieval scores), numpy out ((n,) float32 scores).

    A request is (user index or -1, the user's whole history as the pipeline sees it (the bundle's, then fresh
    events; item indices oldest first), candidates (n,), their retrieval scores (n,)). Every history feature
    comes from that one history, as training builds them from the events before each label.

    `inputs`: the inputs the model takes, of the four the DCN ranker (ranker.onnx) takes; the gradient-boosted
    ranker (ranker_gbm.onnx, model_export.gbm) takes `dense` alone, with GBM_EXTRA_FEATURES after the DCN's
    (`gbm_features`)."""

    bundle: Bundle  # replaced (never mutated) when items are added live
    CHUNK_ROWS = 2048

    def __init__(
        self,
        bundle: Bundle,
        session: ort.InferenceSession,
        io_binding: str = "auto",
        inputs: Sequence[str] | None = None,
        file: str = "ranker.onnx",
        neighbours: ItemNeighbourIndex | None = None,
        gbm_features: bool = False,
        transitions: ItemNeighbourIndex | None = None,
    ) -> None:
        dims = bundle.manifest.dims
        self._gbm_features = gbm_features
        expected = {
            "user_idx": 1,
            "item_idx": 1,
            "user_categorical": len(dims.user_categorical_cardinalities),
            "dense": dims.ranker_dense_dim + (len(GBM_EXTRA_FEATURES) if gbm_features else 0),
        }
        if inputs is None:
            self._feeds = check_inputs(session, expected, bundle, file)
        else:
            self._feeds = check_inputs(session, {n: expected[n] for n in inputs}, bundle, file) or frozenset(inputs)
        self.bundle = bundle
        self._session = session
        self._output = session.get_outputs()[0].name
        self._bind = io_binding_device(session, io_binding)
        self._oov = dims.n_users
        self._trained_items = dims.n_items  # indices from here on are items added live: the unknown-item row
        self._n_cat = len(dims.user_categorical_cardinalities)
        self._history_length = dims.history_length
        # Items added live have no neighbours and are nobody's: the index built here stays right as they come.
        # (Another ranker's, when given: one inversion per bundle.)
        self.neighbours = neighbours or ItemNeighbourIndex(bundle.item_neighbours, bundle.item_neighbour_weights)
        self.transitions = transitions  # the transition source's index (GBM_EXTRA_FEATURES), where the bundle has one

    def inputs(
        self, user: int, history: np.ndarray, candidates: np.ndarray, retrieval_scores: np.ndarray
    ) -> dict[str, np.ndarray]:
        """user: index or -1; history: item indices, oldest first; candidates, retrieval_scores (n,)."""
        return self.inputs_batch([(user, history, candidates, retrieval_scores)])

    def inputs_batch(
        self, requests: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]], width: int | None = None
    ) -> dict[str, np.ndarray]:
        """The ranker's inputs for several users' candidates, rows grouped by request in order: each feature is
        computed for the whole batch at once (numpy's per-call cost is paid per batch, not per request). The
        history windows are no wider than the batch's longest history (`width`: another width, for tests): every
        feature ignores the padding, so they are the same, and a short history (most users of a sparse log)
        costs its own length, not the window's."""
        b = self.bundle
        users = np.array([r[0] for r in requests], dtype=np.int64)  # (B,)
        width = width or max(1, min(self._history_length, max(len(r[1]) for r in requests)))
        windows = history_windows([r[1] for r in requests], width)  # (B, <= L)
        lengths = [len(r[2]) for r in requests]
        rows = np.repeat(np.arange(len(requests)), lengths)  # (N,) the request of each row
        candidates = np.concatenate([r[2] for r in requests]).astype(np.int64, copy=False)  # (N,)
        scores = np.concatenate([r[3] for r in requests]).astype(np.float32, copy=False)
        history_lengths = np.array([len(r[1]) for r in requests], dtype=np.float32)  # training's n_before
        known = users >= 0
        categorical = np.zeros((len(requests), self._n_cat), dtype=np.int64)
        categorical[known] = b.user_categorical[users[known]]
        dense = ranker_dense_features(
            b.item_dense[candidates],
            scores,
            b.item_log_popularity[candidates],
            b.item_recent_popularity[candidates],
            content_profiles(b.item_dense, windows)[rows],
            history_similarity(b.item_embeddings, candidates, windows, rows),
            history_lengths[rows],
            self.neighbours.scores(candidates, windows, rows),
        )
        if self._gbm_features:
            dense = np.concatenate(
                [dense, gbm_extra_features(self.neighbours, self.transitions, candidates, windows, rows)], axis=1
            )
        return {
            "user_idx": np.where(known, users, self._oov)[rows],  # (N,)
            "item_idx": np.minimum(candidates, self._trained_items),  # (N,)
            "user_categorical": categorical[rows],  # (N, U)
            "dense": dense,  # (N, F)
        }

    def score(self, user: int, history: np.ndarray, candidates: np.ndarray, retrieval_scores: np.ndarray) -> np.ndarray:
        return self.score_batch([(user, history, candidates, retrieval_scores)])[0]

    def score_batch(self, requests: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`score` for several users' candidates in one ONNX Runtime call: the rows are concatenated (each row's
        score depends on its own features only) and the output split back. Returns one (n_i,) array each."""
        lengths = [len(r[2]) for r in requests]
        if not sum(lengths):
            return [np.zeros(0, dtype=np.float32) for _ in requests]
        # In chunks of about CHUNK_ROWS rows: one call per chunk still pays numpy's and ONNX Runtime's per-call
        # cost once for several requests, and a chunk's features and activations stay in the CPU's cache
        # (measured at 100K items: 0.39 ms per 500 rows in one 500-row call, 0.78 ms in one 8,000-row call).
        outputs: list[np.ndarray] = []
        chunk: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        rows = 0
        for request, n in zip(requests, lengths, strict=True):
            if chunk and rows + n > self.CHUNK_ROWS:
                outputs.append(self._run(chunk))
                chunk, rows = [], 0
            chunk.append(request)
            rows += n
        outputs.append(self._run(chunk))
        out = np.concatenate(outputs)
        return np.split(out, np.cumsum(lengths)[:-1])

    def _run(self, requests: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        if not sum(len(r[2]) for r in requests):
            return np.zeros(0, dtype=np.float32)
        out = run_onnx(self._session, self._output, feed(self.inputs_batch(requests), self._feeds), self._bind)
        return np.asarray(out, dtype=np.float32).reshape(-1)


def live_in_ranker_places(source: np.ndarray, ranker: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A source's own ordering with the items added live placed where the ranker puts them. A source alone knows
    only the trained items (an item added live has no popularity and no item-item weights yet: under the source it
    would never be recommended); the ranker scores every item from its content. So the live items keep the ranks
    the ranker gives them and the trained items fill the other places in the source's order.

    `source`, `ranker`: (n,) scores of the same candidates; `live`: (n,) bool. Returns (order, scores): the
    candidates' positions, best first, and (n,) non-increasing scores along that order (a trained item keeps its
    source score, a live item takes the score of the trained item before it, else of the first one), so that
    `filtering.top_k`, which keeps the earlier position on ties, returns this order."""
    n = len(source)
    by_ranker = np.argsort(-ranker, kind="stable")
    live_slots = live[by_ranker]  # the ranks the ranker gives the live items
    trained = np.flatnonzero(~live)
    order = np.empty(n, dtype=np.int64)
    order[live_slots] = by_ranker[live_slots]
    order[~live_slots] = trained[np.argsort(-source[trained], kind="stable")]
    if not len(trained):
        return order, ranker[order].astype(np.float32)
    # Each slot's nearest trained slot at or before it (the first trained one for leading live slots).
    last_trained = np.maximum.accumulate(np.where(live_slots, 0, np.arange(n)))
    last_trained[: int(np.argmax(~live_slots))] = int(np.argmax(~live_slots))
    scores = source[order[last_trained]].astype(np.float32)
    return order, scores


def open_gbm(bundle: Bundle, intra_op_threads: int, neighbours: ItemNeighbourIndex) -> Ranker:
    """The gradient-boosted ranker (ranker_gbm.onnx) of `bundle`, sharing the DCN ranker's `neighbours` index, with
    the bundle's transition index where it has one. A tree ensemble runs on ONNX Runtime's CPU provider (a CUDA
    session would fall back to it per call)."""
    session = open_session(bundle.file(RANKER_GBM), ["CPUExecutionProvider"], intra_op_threads)
    transitions = None
    if bundle.item_transitions is not None and bundle.item_transition_weights is not None:
        transitions = ItemNeighbourIndex(bundle.item_transitions, bundle.item_transition_weights)
    return Ranker(
        bundle,
        session,
        "off",
        inputs=("dense",),
        file=RANKER_GBM,
        neighbours=neighbours,
        gbm_features=True,
        transitions=transitions,
    )
