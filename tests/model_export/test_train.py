from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model_export.config import preset
from model_export.data import generate_synthetic, implicit, temporal_split
from model_export.train import (
    embed_items,
    item_popularity,
    ranker_examples,
    sequence_windows,
    train_ranker,
    train_two_tower,
)


def test_sequence_windows_hold_only_the_past() -> None:
    from model_export.data import Interactions

    inter = Interactions(
        user=np.array([1, 0, 0, 0]),
        item=np.array([9, 5, 6, 7]),
        rating=np.ones(4, np.float32),
        timestamp=np.array([1, 30, 10, 20]),
    )
    ordered, windows, n_before = sequence_windows(inter, 2)
    assert ordered.item.tolist() == [6, 7, 5, 9]
    assert windows.tolist() == [[-1, -1], [6, -1], [6, 7], [-1, -1]]
    assert n_before.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("loss", ["bce", "listwise"])
def test_ranker_examples_and_training(loss: str) -> None:
    config = preset("tiny")
    config = replace(config, ranker=replace(config.ranker, loss=loss, epochs=3))
    dataset = implicit(generate_synthetic(config.synthetic, seed=0), config.min_rating)
    train, _ = temporal_split(dataset.interactions, config.holdout_fraction)
    tt_train, rank_events = temporal_split(train, config.ranker.window_fraction)
    user_tower, item_tower, history = train_two_tower(dataset, tt_train, config, False, validation=rank_events)
    assert len(history["validation_recall@50"]) >= 1
    item_emb = embed_items(item_tower, dataset.item_dense)
    examples = ranker_examples(
        dataset, train, rank_events, user_tower, item_emb, item_popularity(tt_train, dataset.n_items), config
    )
    # Each event's positive comes first in its group; the other members are negatives; no row is reused.
    assert (examples.label[examples.groups[:, 0]] == 1.0).all()
    negatives = examples.groups[:, 1:]
    assert (examples.label[negatives[negatives >= 0]] == 0.0).all()
    used = examples.groups[examples.groups >= 0]
    assert len(np.unique(used)) == len(used)
    # Negatives are never items the user interacted with in training.
    seen = set(zip(train.user.tolist(), train.item.tolist(), strict=True))
    users = examples.user_idx
    for row in np.flatnonzero(examples.label == 0.0)[:500]:
        if users[row] < dataset.n_users:
            assert (int(users[row]), int(examples.item_idx[row])) not in seen
    ranker, losses = train_ranker(dataset, examples, examples.dense.shape[1], config, progress=False)
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    import torch

    with torch.no_grad():
        probs = ranker(
            *(torch.from_numpy(a[:64]) for a in (users, examples.item_idx, examples.user_categorical, examples.dense))
        )
    assert ((probs > 0) & (probs < 1)).all()
