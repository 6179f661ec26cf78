"""No train/serve skew: the ranker's features for a user state, built by the service, equal the training example's.

The exporter builds each ranker example from the user's positives before the labelled event; the service builds the
features from the bundle's history followed by the user's fresh events. For the same history the two must agree
feature by feature, whether that history is all in the bundle or partly fresh events (fresh events count as now).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model_export.config import preset
from model_export.data import generate_synthetic, implicit, temporal_split
from model_export.train import (
    item_neighbours,
    item_popularity,
    item_transitions,
    new_user_tower,
    ranker_examples,
    seed_everything,
)
from service.core.bundle import Bundle, load_bundle
from service.core.device import open_session
from service.recommend.features import GBM_EXTRA_FEATURES, RANKER_CONTEXT_FEATURES, ItemNeighbourIndex
from service.recommend.pipeline import Pipeline
from service.recommend.ranking import Ranker


def _bundle_with_histories(bundle: Bundle, histories: dict[int, np.ndarray]) -> Bundle:
    lengths = np.zeros(bundle.manifest.dims.n_users, dtype=np.int64)
    for u, h in histories.items():
        lengths[u] = len(h)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items = np.concatenate([np.zeros(0, np.int64), *(histories[u] for u in sorted(histories))]).astype(np.int64)
    return replace(bundle, history_offsets=offsets, history_items=items)


@pytest.mark.parametrize("fresh_share", [0.0, 0.5, 1.0])
def test_serving_features_equal_the_training_examples(tiny_bundle: Path, fresh_share: float) -> None:
    config = preset("tiny")
    # No id dropout, so each example row names its real user and item.
    config = replace(config, two_tower=replace(config.two_tower, user_id_dropout=0.0, item_id_dropout=0.0))
    dataset = implicit(generate_synthetic(config.synthetic, seed=config.seed), config.min_rating)
    train = dataset.interactions
    tt_train, events = temporal_split(train, config.ranker.window_fraction)
    seed_everything(0)
    cfg = config.two_tower
    user_tower = new_user_tower(dataset, cfg).eval()
    rng = np.random.default_rng(0)
    item_emb = rng.normal(size=(dataset.n_items, cfg.embedding_dim)).astype(np.float32)
    item_emb /= np.linalg.norm(item_emb, axis=1, keepdims=True)
    popularity = item_popularity(tt_train, dataset.n_items)
    neighbours = item_neighbours(tt_train, dataset.n_users, dataset.n_items, config.ranker.neighbours)
    config = replace(config, ranker=replace(config.ranker, retrieved_positives_only=False, new_user_share=0.0))
    # With the gradient-boosted ranker's extra features: the DCN ranker's are the columns before them.
    transitions = item_transitions(tt_train, dataset.n_items, 20)
    examples = ranker_examples(
        dataset,
        train,
        events,
        user_tower,
        item_emb,
        popularity,
        neighbours,
        config,
        gbm_features=True,
        transitions=transitions,
        transition_candidates=20,
        transition_negatives=4,
    )
    assert (examples.dense[:, -4:] > 0).mean() > 0.05  # the transition features are live

    bundle = load_bundle(tiny_bundle)
    assert bundle.manifest.dims.n_users == dataset.n_users  # the same generated data
    bundle = replace(
        bundle,
        item_embeddings=item_emb,
        item_log_popularity=popularity.overall,
        item_recent_popularity=popularity.recent,
        item_neighbours=neighbours.items,
        item_neighbour_weights=neighbours.weights,
    )
    # Each user's positives in time order, as the exporter orders them.
    order = np.lexsort((train.timestamp, train.user))
    sequences = {int(u): train.item[order][train.user[order] == u] for u in np.unique(train.user)}

    checked = 0
    for group in examples.groups[:: max(1, len(examples.groups) // 60)]:
        rows = group[group >= 0]
        user, positive = int(examples.user_idx[rows[0]]), int(examples.item_idx[rows[0]])
        sequence = sequences[user]
        before = sequence[: int(np.flatnonzero(sequence == positive)[0])]  # the history the example was built from
        cut = len(before) - round(fresh_share * len(before))
        stored, fresh = before[:cut], before[cut:]
        served = _bundle_with_histories(bundle, {user: stored})
        ranker = Ranker(served, open_session(tiny_bundle / "ranker.onnx", ["CPUExecutionProvider"], 1))
        gbm_session = open_session(tiny_bundle / "ranker_gbm.onnx", ["CPUExecutionProvider"], 1)
        gbm = Ranker(
            served,
            gbm_session,
            inputs=("dense",),
            file="ranker_gbm.onnx",
            gbm_features=True,
            transitions=ItemNeighbourIndex(transitions.items, transitions.weights),
        )
        pipeline_history = Pipeline.history(_PipelineView(served), user, fresh)  # the service's own composition
        retrieval = examples.dense[rows, len(dataset.item_dense_names)]
        inputs = ranker.inputs(user, pipeline_history, examples.item_idx[rows], retrieval)
        gbm_dense = gbm.inputs(user, pipeline_history, examples.item_idx[rows], retrieval)["dense"]
        expected = examples.dense[rows]
        names = dataset.item_dense_names + list(RANKER_CONTEXT_FEATURES)
        assert inputs["dense"].shape[1] == len(names)
        assert gbm_dense.shape[1] == len(names) + len(GBM_EXTRA_FEATURES) == expected.shape[1]
        for j, name in enumerate(names + list(GBM_EXTRA_FEATURES)):
            if j < len(names):
                np.testing.assert_allclose(inputs["dense"][:, j], expected[:, j], rtol=1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(gbm_dense[:, j], expected[:, j], rtol=1e-5, atol=1e-5, err_msg=name)
        assert (inputs["user_idx"] == examples.user_idx[rows]).all()
        checked += 1
    assert checked >= 30


class _PipelineView:
    """What `Pipeline.history` reads: the bundle."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
