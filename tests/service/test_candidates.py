"""Candidates from more than one source (service.recommend.candidates, issue 27)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.bundle import load_bundle
from service.recommend.candidates import ExtraCandidates, merge
from service.recommend.features import ItemNeighbourIndex
from service.recommend.filtering import top_k
from service.recommend.pipeline import Pipeline
from service.recommend.ranking import live_in_ranker_places


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


def test_the_transition_source_follows_the_latest_items() -> None:
    # Transitions: row c lists its predecessors. 4 follows 0 (0.6) and 3 (0.35); 5 follows 3 (0.5); 1 follows 2.
    table = np.full((6, 2), -1, dtype=np.int32)
    weights = np.zeros((6, 2), dtype=np.float32)
    table[4], weights[4] = [0, 3], [0.6, 0.35]
    table[5, 0], weights[5, 0] = 3, 0.5
    table[1, 0], weights[1, 0] = 2, 0.9
    transitions = ItemNeighbourIndex(table, weights)

    def extra(popular: int) -> ExtraCandidates:
        return ExtraCandidates(sources(0, 0).neighbours, np.arange(6.0), 0, popular, transitions, transition=2)

    # History 2, 0, 3: 4 (0.95), 1 (0.9), then 5 (0.5) is beyond the two asked; the most popular item not
    # already there (5) after them.
    window = np.array([2, 0, 3, -1])
    assert extra(0).add(window, blocked=window[:3], retrieved=np.array([], np.int64)).tolist() == [4, 1]
    assert extra(1).add(window, blocked=window[:3], retrieved=np.array([], np.int64)).tolist() == [4, 1, 5]
    # Only the latest TRANSITION_ITEMS (3) items count: with 2 four events back, 1 no longer follows; 4 is retrieved.
    window = np.array([2, 0, 3, 3, -1])
    assert extra(0).add(window, blocked=window[:4], retrieved=np.array([4])).tolist() == [5]
    # Without a transition index (a bundle without one) the source adds nothing.
    none = ExtraCandidates(sources(0, 0).neighbours, np.arange(6.0), 0, 0, None, transition=2)
    assert none.add(window, window[:4], np.array([4])).tolist() == []


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
        ties = np.flatnonzero(np.diff(recs.ranking_scores) == 0)
        if ranking == "popular":  # a tie goes to what is popular lately, then to the two-tower's order
            recent = bundle.item_recent_popularity[recs.items]
            assert (recent[ties] >= recent[ties + 1]).all()
            ties = ties[recent[ties] == recent[ties + 1]]
        assert (recs.retrieval_scores[ties] >= recs.retrieval_scores[ties + 1] - 1e-6).all()
        assert not np.isin(recs.items, history).any()


def test_live_items_keep_the_rankers_places_and_the_trained_ones_the_sources_order() -> None:
    source = np.array([0.9, 0.0, 0.5, 0.7, 0.0, 0.1], dtype=np.float32)  # live items (1, 4) score nothing here
    ranker = np.array([0.2, 0.8, 0.1, 0.3, 0.25, 0.0], dtype=np.float32)  # the ranker: 1, 3, 4, 0, 2, 5
    live = np.array([False, True, False, False, True, False])
    order, scores = live_in_ranker_places(source, ranker, live)
    # The ranker puts the live items at ranks 0 and 2; the trained ones fill ranks 1, 3, 4, 5 by source: 0, 3, 2, 5.
    assert order.tolist() == [1, 0, 4, 3, 2, 5]
    np.testing.assert_allclose(scores, [0.9, 0.9, 0.9, 0.7, 0.5, 0.1])
    assert top_k(scores, 6).tolist() == list(range(6))  # top_k keeps this order (ties: the earlier place)
    # No live item: the source's order, its own scores.
    order, scores = live_in_ranker_places(source, ranker, np.zeros(6, bool))
    assert order.tolist() == [0, 3, 2, 5, 1, 4]
    assert scores.tolist() == source[order].tolist()
    # Only live items: the ranker's order and scores.
    order, scores = live_in_ranker_places(source, ranker, np.ones(6, bool))
    assert order.tolist() == [1, 3, 4, 0, 2, 5]
    assert scores.tolist() == ranker[order].tolist()


@pytest.mark.parametrize("ranking", ["item_item", "popular"])
def test_items_added_live_are_recommended_under_a_sources_ordering(tiny_bundle: Path, ranking: str) -> None:
    bundle = load_bundle(tiny_bundle)
    pipelines = {mode: Pipeline.open(bundle, device="cpu", ranking=mode) for mode in (ranking, "ranker")}
    n = bundle.manifest.dims.n_items
    before = {user: pipelines[ranking].recommend(user, None, 10, 50).ranking_scores for user in range(0, 40, 3)}
    # Live copies of trained items (their embedding and features): no popularity, no item-item weights.
    copies = np.arange(0, n, 4)
    for pipeline in pipelines.values():
        pipeline.add_items(
            [f"live-{i}" for i in copies],
            [f"Live {i}" for i in copies],
            bundle.item_dense[copies],
            bundle.item_embeddings[copies],
        )
    shown = {mode: 0 for mode in pipelines}
    for user in before:
        recs = {mode: p.recommend(user, None, 10, 50) for mode, p in pipelines.items()}
        for mode, r in recs.items():
            shown[mode] += int((r.items >= n).sum())
        got = recs[ranking]
        assert (np.diff(got.ranking_scores) <= 1e-7).all()
        trained = got.items[got.items < n]
        own = pipelines[ranking].source_scores(trained, np.zeros(len(trained), np.float32), bundle.history(user))
        # The trained items are the source's best, in its order: the live items displaced its last ones.
        np.testing.assert_allclose(own, before[user][: len(trained)], rtol=1e-6)
    assert shown["ranker"] > 0
    assert shown[ranking] > 0  # without the ranker's places: never (no popularity, no item-item weights)


def test_the_gradient_boosted_ranker_orders_the_ann_and_item_item_candidates(tiny_bundle: Path) -> None:
    """ranking=gbm: the union of the two-tower's candidates and the item-item source's top, scored by
    ranker_gbm.onnx (dense features alone) on the features the service builds for the DCN ranker."""
    bundle = load_bundle(tiny_bundle)
    depth = bundle.manifest.candidates.gbm_item_item
    assert depth > 0
    pipeline = Pipeline.open(bundle, device="cpu", ranking="gbm")
    assert pipeline.gbm is not None
    assert pipeline.gbm.neighbours is pipeline.ranker.neighbours
    grew = 0
    for user in range(0, 60, 3):
        history = bundle.history(user)
        recs = pipeline.recommend(user, None, 10, 20)  # 20 from the ANN: the item-item top joins them
        assert not np.isin(recs.items, history).any()
        assert (np.diff(recs.ranking_scores) <= 1e-7).all()
        expected = pipeline.gbm.score(user, history, recs.items, recs.retrieval_scores)
        np.testing.assert_allclose(recs.ranking_scores, expected, rtol=1e-5, atol=1e-6)
        grew += recs.n_after_filter > 20
    assert grew > 0
    # The DCN ranker's answer differs: it is another model on fewer candidates.
    ranker = Pipeline.open(bundle, device="cpu", ranking="ranker")
    assert any(
        ranker.recommend(u, None, 10, 20).items.tolist() != pipeline.recommend(u, None, 10, 20).items.tolist()
        for u in range(0, 60, 3)
    )
