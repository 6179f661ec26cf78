"""Candidates from more than one source (service.recommend.candidates, issue 27)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.bundle import load_bundle
from service.recommend.candidates import ExtraCandidates, merge
from service.recommend.features import ItemNeighbourIndex
from service.recommend.pipeline import Pipeline


def sources(item_item: int, popular: int) -> ExtraCandidates:
    # Popularity: 5 > 4 > ... > 0.
    neighbours = np.full((6, 2), -1, dtype=np.int32)
    weights = np.zeros((6, 2), dtype=np.float32)
    neighbours[1, 0], weights[1, 0] = 0, 0.9  # item 1 lists 0: a user with 0 scores 1 by 0.9
    neighbours[2, 0], weights[2, 0] = 0, 0.1
    neighbours[2, 1], weights[2, 1] = 3, 0.5  # a user with 0 and 3 scores 2 by 0.6
    return ExtraCandidates(ItemNeighbourIndex(neighbours, weights), np.arange(6.0), item_item, popular)


def test_item_item_then_popular_none_blocked_or_retrieved() -> None:
    extra = sources(item_item=2, popular=2)
    window = np.array([-1, 0, 3])
    assert extra.add(window, blocked=np.array([0, 3]), retrieved=np.array([], np.int64)).tolist() == [1, 2, 5, 4]
    assert extra.add(window, blocked=np.array([0, 3, 5]), retrieved=np.array([2])).tolist() == [1, 4]
    # No history: the popular items only; nothing asked: nothing added.
    assert extra.add(np.array([-1, -1]), np.array([5]), np.array([4])).tolist() == [3, 2]
    assert sources(0, 0).add(window, np.array([0]), np.array([1])).tolist() == []


def test_merge_scores_the_added_items_by_the_two_tower_inner_product() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(8, 4)).astype(np.float32)
    embedding = rng.normal(size=4).astype(np.float32)
    retrieved, scores = np.array([3, 1]), np.array([2.0, 1.0], dtype=np.float32)
    merged, merged_scores = merge(retrieved, scores, np.array([6, 0]), embedding, items)
    assert merged.tolist() == [3, 1, 6, 0]
    np.testing.assert_allclose(merged_scores, [2.0, 1.0, items[6] @ embedding, items[0] @ embedding], rtol=1e-6)
    assert merge(retrieved, scores, np.zeros(0, np.int64), embedding, items)[0] is retrieved


@pytest.mark.parametrize("ranking", ["item_item", "two_tower", "popular"])
def test_a_source_alone_orders_the_candidates_by_its_own_score(tiny_bundle: Path, ranking: str) -> None:
    bundle = load_bundle(tiny_bundle)
    pipeline = Pipeline.open(bundle, device="cpu", ranking=ranking)
    assert Pipeline.open(bundle, device="cpu").ranking == bundle.manifest.candidates.ranking
    for user in range(0, 40, 3):
        history = bundle.history(user)
        recs = pipeline.recommend(user, None, 10, 50)
        own = {
            "item_item": pipeline.ranker.neighbours.scores(recs.items, history)[:, 0],
            "two_tower": recs.retrieval_scores,
            "popular": bundle.item_log_popularity[recs.items],
        }[ranking]
        np.testing.assert_allclose(recs.ranking_scores, own, rtol=1e-6)
        assert (np.diff(recs.ranking_scores) <= 1e-7).all()  # best first
        ties = np.flatnonzero(np.diff(recs.ranking_scores) == 0)  # a tie goes to the two-tower's order
        assert (recs.retrieval_scores[ties] >= recs.retrieval_scores[ties + 1] - 1e-6).all()
        assert not np.isin(recs.items, history).any()
