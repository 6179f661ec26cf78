"""The asynchronous front of the pipeline for the API: a user's recent events (`service.store.recent`) and cached
embedding (`service.store.cache`) on the event loop, the blocking ONNX Runtime / FAISS work micro-batched into a
thread pool (`service.recommend.pipeline`), the stage timings and counts into the metrics; after events, the
users' embeddings refreshed off the response path (`service.recommend.refresh`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.core.batching import MicroBatcher
from service.core.metrics import Metrics
from service.recommend.filtering import most_popular, popularity_order
from service.recommend.pipeline import Pipeline, Query, Recommendations
from service.recommend.refresh import Refresher
from service.recommend.user_encoder import UNKNOWN_USER
from service.store.cache import CacheResult, EmbeddingCache
from service.store.events import DISLIKE_PREFIX
from service.store.forgotten import Forgotten
from service.store.recent import RecentEvents
from service.store.records import NewEvent

T = TypeVar("T")
MAX_PENDING_STORES = 256  # embedding writes in flight (`Recommender.store_later`)


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    max_batch: int = 1  # 1: batching off
    max_wait_s: float = 0.0
    workers: int = 1  # batches computed at once


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    user_index: int
    recommendations: Recommendations
    cache: CacheResult | None  # None for unknown users without events, whose embedding is never cached
    fresh_events: int  # recent events (cache or database) that shaped this response


@dataclass(frozen=True, slots=True)
class FreshHistory:
    """A user's recent events, as bundle indices (ids the bundle does not know are skipped)."""

    interactions: np.ndarray  # (n,) int64, oldest first
    disliked: np.ndarray  # (m,) int64
    digest: str  # identifies the entries: part of the embedding's cache key, so a new event is a new key

    @property
    def empty(self) -> bool:
        return not self.digest


NO_FRESH_EVENTS = FreshHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), "")


class Recommender:
    """Async front of the pipeline for the API; owns the cache policy and records the metrics."""

    def __init__(
        self,
        pipeline: Pipeline,
        cache: EmbeddingCache,
        metrics: Metrics,
        executor: Executor,
        num_candidates: int | None,
        events: RecentEvents,
        batching: BatchingOptions | None = None,
        refresh_batch: int = 100,
        refresh_pending: int = 1000,
        forgotten: Forgotten | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.forgotten = forgotten if forgotten is not None else Forgotten()  # (an empty one is falsy)
        self._stores: dict[asyncio.Task[None], str] = {}  # embedding writes in flight -> their user
        self.cache = cache
        self.events = events
        self.metrics = metrics
        self.executor = executor
        self.num_candidates = num_candidates  # None: the bundle's (Pipeline.depth)
        self.key_prefix = f"reco:{pipeline.bundle.version}:user_emb:"
        self._popular: tuple[object, np.ndarray] | None = None  # (the bundle, its popularity order)
        b = batching or BatchingOptions()
        # The pipeline is read when each batch runs (it may be replaced), hence the lambda.
        self.batcher: MicroBatcher[Query, Recommendations] = MicroBatcher(
            self.run_batch, executor, b.max_batch, b.max_wait_s, b.workers
        )
        refreshed = metrics.embedding_refreshes
        self.refresher: Refresher[FreshHistory] = Refresher(
            self.refresh_embeddings,
            max_batch=refresh_batch,
            max_pending=refresh_pending,
            on_drop=refreshed.labels("dropped").inc,
            on_failure=refreshed.labels("failed").inc,
        )

    def run_batch(self, queries: Sequence[Query]) -> list[Recommendations]:
        """One micro-batch (in the compute pool), its stages counted once per batch in their own metric. The
        pipeline is read when each batch runs (it may be replaced)."""
        out = self.pipeline.recommend_batch(queries)
        if out:
            for stage, seconds in out[0].batch_timings.items():
                self.metrics.batch_stage_latency.labels(stage).observe(seconds)
            self.metrics.batch_size.observe(len(queries))
        return out

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the compute thread pool (never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def user_of(self, user_id: str) -> tuple[int, bool]:
        """(the user's index in the bundle, or UNKNOWN_USER; whether they are a deleted user the bundle still
        holds, and so served as unknown: `service.store.forgotten`)."""
        user = self.pipeline.user_index(user_id)
        if user != UNKNOWN_USER and self.forgotten.masks(user_id, self.pipeline.bundle):
            return UNKNOWN_USER, True
        return user, False

    async def fresh_history(self, user_id: str) -> FreshHistory:
        return self.fresh_from(await self.events.recent(user_id))

    def fresh_from(self, entries: list[str]) -> FreshHistory:
        if not entries:
            return NO_FRESH_EVENTS
        liked = [e for e in entries if not e.startswith(DISLIKE_PREFIX)]
        disliked = [e[len(DISLIKE_PREFIX) :] for e in entries if e.startswith(DISLIKE_PREFIX)]
        digest = hashlib.blake2b("\x1f".join(entries).encode(), digest_size=8).hexdigest()
        return FreshHistory(self.pipeline.item_indices(liked), self.pipeline.item_indices(disliked), digest)

    def cache_key(self, user_id: str, fresh: FreshHistory) -> str:
        return self.key_prefix + user_id + (f":ev:{fresh.digest}" if not fresh.empty else "")

    async def cached_embedding(
        self, user: int, user_id: str, fresh: FreshHistory
    ) -> tuple[np.ndarray | None, CacheResult | None, str | None]:
        """(embedding or None on a miss, the cache's answer, the key to store a computed one under). Unknown
        users without events share one embedding, computed at start-up and never cached."""
        if user == UNKNOWN_USER and fresh.empty:
            return self.pipeline.unknown_user_embedding, None, None
        key = self.cache_key(user_id, fresh)
        return self.count_lookup(key, *(await self.lookup(key)))

    async def lookup(self, key: str) -> tuple[np.ndarray | None, CacheResult, float]:
        t0 = time.perf_counter()
        cached, result = await self.cache.get(key)
        return cached, result, time.perf_counter() - t0

    def count_lookup(
        self, key: str, cached: np.ndarray | None, result: CacheResult, seconds: float
    ) -> tuple[np.ndarray | None, CacheResult, str]:
        self.metrics.stage_latency.labels("cache").observe(seconds)
        self.metrics.cache_requests.labels(result.value).inc()
        return cached, result, key

    async def fresh_and_cached(
        self, user: int, user_id: str, masked: bool = False
    ) -> tuple[FreshHistory, tuple[np.ndarray | None, CacheResult | None, str | None]]:
        """The user's fresh events and cached embedding. The embedding's key depends on the events, so a known
        user's embedding is read at the same time as the events, under the key it has without fresh events
        (most users, most of the time): the two reads are in flight together (one round trip's wait instead of
        two, each on its own client) and only a user with fresh events reads again. A `masked` (deleted) user's
        embedding is never read or stored: an entry computed before the deletion reached this process may be there."""
        if masked:
            fresh = await self.fresh_history(user_id)
            return fresh, ((self.pipeline.unknown_user_embedding if fresh.empty else None), None, None)
        if user == UNKNOWN_USER:
            fresh = await self.fresh_history(user_id)
            return fresh, await self.cached_embedding(user, user_id, fresh)
        key = self.cache_key(user_id, NO_FRESH_EVENTS)
        fresh, speculative = await asyncio.gather(self.fresh_history(user_id), self.lookup(key))
        if fresh.empty:
            return fresh, self.count_lookup(key, *speculative)
        return fresh, await self.cached_embedding(user, user_id, fresh)

    async def store_embedding(self, key: str, embedding: np.ndarray) -> None:
        t0 = time.perf_counter()
        write = await self.cache.set(key, embedding)
        self.metrics.stage_latency.labels("cache").observe(time.perf_counter() - t0)
        if write is not CacheResult.STORED:
            self.metrics.cache_requests.labels(write.value).inc()

    def store_later(self, user_id: str, key: str, embedding: np.ndarray) -> None:
        """Cache an embedding off the response path: the answer never waits for the cache's write (nor, with
        Redis hung, for its timeout). At most `MAX_PENDING_STORES` at once; beyond, the write is dropped and
        counted (`reco_cache_requests_total{result="dropped"}`: the next request computes it again)."""
        if len(self._stores) >= MAX_PENDING_STORES:
            self.metrics.cache_requests.labels("dropped").inc()
            return
        task = asyncio.create_task(self.store_embedding(key, embedding))
        self._stores[task] = user_id
        task.add_done_callback(self._stores.pop)

    async def stores_done(self, user_id: str | None = None) -> None:
        """Wait for the writes in flight (of `user_id`'s embeddings only, if given)."""
        waiting = [t for t, u in self._stores.items() if user_id is None or u == user_id]
        if waiting:
            await asyncio.wait(waiting)

    async def compute_embedding(self, user: int, history: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        embedding: np.ndarray = (await self.run_blocking(lambda: self.pipeline.encode(np.array([user]), [history])))[0]
        self.metrics.stage_latency.labels("user_encoding").observe(time.perf_counter() - t0)
        return embedding

    async def recommend(self, user_id: str, k: int, exclude_item_ids: list[str]) -> RecommendationResult:
        pipeline = self.pipeline
        user, masked = self.user_of(user_id)
        fresh, (embedding, cache_result, key) = await self.fresh_and_cached(user, user_id, masked)
        if user == UNKNOWN_USER and fresh.empty:
            self.metrics.fallbacks.labels("unknown_user").inc()
        history = pipeline.history(user, fresh.interactions)
        exclude = np.r_[pipeline.item_indices(exclude_item_ids), fresh.disliked].astype(np.int64)
        # A cache miss is encoded in the batch, with the other requests' encodings.
        submitted = time.perf_counter()
        n = self.num_candidates or pipeline.depth(user)
        recs = await self.batcher.submit(Query(user, embedding, k, n, exclude, history))
        self.metrics.stage_latency.labels("queue").observe(max(0.0, recs.started - submitted))
        if recs.encoded and key is not None and recs.embedding is not None:
            self.store_later(user_id, key, recs.embedding)
        for stage, seconds in recs.timings.items():
            self.metrics.stage_latency.labels(stage).observe(seconds)
        self.metrics.candidates.labels("retrieved").observe(recs.n_retrieved)
        self.metrics.candidates.labels("after_filtering").observe(recs.n_after_filter)
        return RecommendationResult(user, recs, cache_result, len(fresh.interactions) + len(fresh.disliked))

    async def popular(self, user_id: str, k: int, exclude_item_ids: list[str]) -> RecommendationResult:
        """The most popular items the user has not seen (nor excluded, nor disliked): the bundle's popularity
        alone, as an experiment's control variant serves it (`service.experiments`). Retrieval scores are 0, ranking
        scores the items' log popularity."""
        pipeline = self.pipeline
        user, _ = self.user_of(user_id)
        fresh = await self.fresh_history(user_id)

        def rank() -> Recommendations:
            bundle = pipeline.bundle
            if self._popular is None or self._popular[0] is not bundle:
                self._popular = (bundle, popularity_order(bundle.item_log_popularity, bundle.item_recent_popularity))
            exclude = np.r_[pipeline.item_indices(exclude_item_ids), fresh.disliked].astype(np.int64)
            blocked = pipeline.blocked(user, pipeline.history(user, fresh.interactions), exclude)
            items = most_popular(self._popular[1], blocked, k)
            scores = bundle.item_log_popularity[items].astype(np.float32)
            return Recommendations(items, np.zeros(len(items), np.float32), scores, len(items), len(items))

        recs = await self.run_blocking(rank)
        return RecommendationResult(user, recs, None, len(fresh.interactions) + len(fresh.disliked))

    async def close(self) -> None:
        """Stop the background refreshes (a reload replaced this bundle, or the service stops); the cache
        writes in flight finish (each bounded by the cache's timeout)."""
        await self.refresher.close()
        await self.stores_done()

    async def delete_user(self, user_id: str) -> tuple[int, int]:
        """Delete everything held about the user: their events and row in the database, their cached events and
        every cached embedding (any bundle version): (events deleted, embeddings deleted). The database goes
        first; an embedding cached in between is keyed by the events' digest and is deleted right after. Raises
        EventStoreUnavailable or CacheUnavailable: nothing may be assumed deleted, retry."""
        deleted = await self.events.delete(user_id)
        self.forgotten.add(user_id, time.time())  # this process masks them at once; the others within a sync
        await self.refresher.forget(user_id)  # a refresh in progress finishes first: what it stored is deleted
        await self.stores_done(user_id)  # ... and so does a write of an embedding just computed
        return deleted, await self.cache.delete_user(user_id)

    async def forget_locally(self, user_id: str) -> None:
        """Another process deleted the user: drop what this process's own caches hold of them (a shared Redis
        was cleared by the deleting process)."""
        await self.refresher.forget(user_id)
        if self.events.cache is not None and self.events.cache.backend == "local":
            await self.events.cache.delete(user_id)
        if self.cache.backend == "local":
            await self.cache.delete_user(user_id)

    async def record_events(self, events: list[NewEvent]) -> int:
        """Store `events` (in order) in the database and refresh each user's cached events from what the
        database holds, so the next request finds them; their embeddings are recomputed after the answer
        (`refresher`). The number of events that were new (a retried event_id is stored once). Raises
        EventStoreUnavailable if the database did not take them (nothing was written)."""
        new, held = await self.events.append(events)
        todo = []
        changed = {e.user_id for e, is_new in zip(events, new, strict=True) if is_new}  # a retry changes nothing
        for user_id, entries in held.items():
            fresh = self.fresh_from(entries)
            if user_id in changed and not fresh.empty and not self.user_of(user_id)[1]:  # masked: never cached
                todo.append((user_id, fresh))
        self.refresher.submit(todo)
        return sum(new)

    async def refresh_embeddings(self, todo: list[tuple[str, FreshHistory]]) -> None:
        """The embeddings of `todo`'s users for their fresh events, in one user-encoder call, into the cache."""
        pipeline = self.pipeline
        users = np.array([pipeline.user_index(user_id) for user_id, _ in todo], dtype=np.int64)
        histories = [pipeline.history(int(u), fresh.interactions) for u, (_, fresh) in zip(users, todo, strict=True)]
        embeddings = await self.run_blocking(lambda: pipeline.encode(users, histories))
        for (user_id, fresh), embedding in zip(todo, embeddings, strict=True):  # one at a time: a bounded pool
            await self.store_embedding(self.cache_key(user_id, fresh), embedding)
        self.metrics.embedding_refreshes.labels("stored").inc(len(todo))
