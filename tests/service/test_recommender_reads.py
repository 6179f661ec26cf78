"""The two reads before a recommendation (fresh events, cached embedding) go out together for a known user, and
a user with fresh events still gets the embedding of those events."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.core.bundle import load_bundle
from service.core.metrics import Metrics
from service.recommend.pipeline import Pipeline
from service.recommend.recommender import Recommender
from service.store.cache import CacheResult, LocalEmbeddingCache
from service.store.events import LocalEventCache
from service.store.recent import RecentEvents


class OverlapCheckingEvents(LocalEventCache):
    """An event store whose read finishes only once the cache has been asked too (or after a timeout)."""

    def __init__(self, cache_asked: asyncio.Event) -> None:
        super().__init__(cap=50, max_users=100)
        self.cache_asked = cache_asked
        self.overlapped: list[bool] = []

    async def recent(self, user_id: str) -> list[str] | None:
        try:
            await asyncio.wait_for(self.cache_asked.wait(), timeout=0.5)
            self.overlapped.append(True)
        except TimeoutError:
            self.overlapped.append(False)
        self.cache_asked.clear()
        return await super().recent(user_id)


class RecordingCache(LocalEmbeddingCache):
    def __init__(self, dim: int, asked: asyncio.Event) -> None:
        super().__init__(100, 3600, dim)
        self.asked = asked
        self.keys: list[str] = []

    async def get(self, key: str) -> tuple[np.ndarray | None, CacheResult]:
        self.keys.append(key)
        self.asked.set()
        return await super().get(key)


def test_events_and_cache_are_read_together_and_fresh_events_pick_their_own_key(tiny_bundle: Path) -> None:
    pipeline = Pipeline.open(load_bundle(tiny_bundle), device="cpu")
    dim = pipeline.bundle.manifest.dims.embedding_dim

    async def scenario() -> None:
        asked = asyncio.Event()
        cache, events = RecordingCache(dim, asked), OverlapCheckingEvents(asked)
        metrics = Metrics()
        with ThreadPoolExecutor(2) as executor:
            recommender = Recommender(pipeline, cache, metrics, executor, 50, RecentEvents(events, None, metrics))
            user_id = pipeline.bundle.user_ids[3]
            plain_key = recommender.key_prefix + user_id
            # A vector cached under the no-events key: used while the user has no fresh events.
            marker = np.full(dim, 0.125, dtype=np.float32)
            await cache.set(plain_key, marker)
            first = await recommender.recommend(user_id, 5, [])
            assert events.overlapped == [True]  # the cache was asked before the events had come back
            assert cache.keys == [plain_key]
            assert first.cache is CacheResult.HIT
            np.testing.assert_array_equal(first.recommendations.embedding, marker)

            await events.fill(user_id, [pipeline.bundle.item_ids[7]], overwrite=True)
            second = await recommender.recommend(user_id, 5, [])
            assert second.fresh_events == 1
            assert cache.keys[1] == plain_key  # read speculatively, then the key with the events' digest
            assert cache.keys[2].startswith(plain_key + ":ev:")
            assert second.cache is CacheResult.MISS
            assert second.recommendations.encoded  # computed from the history with the event, not the marker
            assert not np.array_equal(second.recommendations.embedding, marker)
            # Only the lookups that were used are counted.
            text = metrics.exposition()[0].decode()
            assert 'reco_cache_requests_total{result="hit"} 1.0' in text
            assert 'reco_cache_requests_total{result="miss"} 1.0' in text

    asyncio.run(scenario())
