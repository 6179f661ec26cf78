"""What one process opens in its lifespan, one function a resource: the bundle's serving objects (pipeline,
recommender, items added live; warmed up), the Redis reads both caches share, the caches and the database."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.core.bundle import Bundle
from service.core.device import release_free_memory
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.items.item_encoder import ItemEncoder
from service.items.live_items import LiveItems
from service.recommend.pipeline import Pipeline
from service.recommend.recommender import BatchingOptions, Recommender
from service.store.breaker import CircuitBreaker
from service.store.cache import EmbeddingCache, LocalEmbeddingCache, RedisEmbeddingCache
from service.store.events import EventCache, LocalEventCache, RedisEventCache
from service.store.forgotten import Forgotten
from service.store.recent import RecentEvents
from service.store.records import Records, RecordsUnavailable
from service.store.redis_batch import ClientReads, ReadPipeline, Reads

log = logging.getLogger(__name__)


@dataclass
class Serving:
    """Everything that belongs to one bundle; swapped as a whole by a reload. A request takes one `Serving` at
    its start and uses it throughout, so a reload never mixes two bundles in one response."""

    pipeline: Pipeline
    recommender: Recommender
    live_items: LiveItems

    @property
    def bundle(self) -> Bundle:
        return self.pipeline.bundle


def precision_label(precisions: dict[str, str]) -> str:
    """e.g. "fp32", or "user_tower=fp16,ranker=fp32" when the models differ."""
    if len(set(precisions.values())) == 1:
        return next(iter(precisions.values()))
    return ",".join(f"{model}={p}" for model, p in precisions.items())


async def open_serving(
    bundle: Bundle,
    settings: Settings,
    metrics: Metrics,
    executor: Executor,
    cache: EmbeddingCache,
    events: EventCache,
    records: Records,
    forgotten: Forgotten | None = None,
) -> Serving:
    """Models, index and items added live for `bundle`, warmed up (first ONNX runs allocate and optimise)."""
    delta = settings.live_items_path or settings.bundle_path.parent / "live_items.jsonl"
    k = min(10, settings.max_k)

    def build() -> tuple[Pipeline, LiveItems]:
        pipeline = Pipeline.configured(bundle, settings)
        encoder = ItemEncoder(bundle, pipeline.onnx_providers, settings.ort_intra_op_threads)
        live = LiveItems(pipeline, encoder, delta, records if settings.live_items_store == "database" else None)
        try:
            replayed = live.sync()
        except RecordsUnavailable as e:  # serve without them for now: the follower adds them once it can
            log.warning("items added live not re-applied yet (%s); they follow once the database answers", e)
            replayed = 0
        if replayed:
            log.info("re-applied %d live items from %s", replayed, delta)
        for _ in range(settings.warmup_requests):
            for user in (0, -1):
                n = settings.num_candidates or pipeline.depth(user)
                pipeline.recommend(user, pipeline.encode(np.array([user]))[0], k, n)
        return pipeline, live

    pipeline, live_items = await asyncio.get_running_loop().run_in_executor(executor, build)
    batching = BatchingOptions(
        settings.batch_max_size,
        settings.batch_max_wait_ms / 1000,
        settings.batch_loops,
    )
    recommender = Recommender(
        pipeline,
        cache,
        metrics,
        executor,
        settings.num_candidates,
        RecentEvents(events, records, metrics),
        batching,
        refresh_batch=settings.max_event_users_per_request,
        refresh_pending=settings.embedding_refresh_max_pending,
        forgotten=forgotten,
    )
    await asyncio.get_running_loop().run_in_executor(executor, release_free_memory)  # loading's temporaries
    return Serving(pipeline, recommender, live_items)


def open_shared_reads(settings: Settings) -> Reads | None:
    """One read pipeline for the embedding cache and the recent-events cache (a request's two reads, and concurrent
    requests', in one round trip), with the longer of their timeouts; each keeps its own deadline. None without
    Redis."""
    if not settings.redis_url:
        return None
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    socket_timeout_s = max(settings.redis_socket_timeout_s, settings.events_redis_timeout_s)
    connect_timeout_s = max(settings.redis_connect_timeout_s, settings.events_redis_timeout_s)
    if settings.redis_reads == "client":
        return ClientReads(
            settings.redis_url,
            password=password,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            pool_size=settings.redis_pool_size,
        )
    return ReadPipeline(
        settings.redis_url,
        password=password,
        socket_timeout_s=socket_timeout_s,
        connect_timeout_s=connect_timeout_s,
        batch=settings.redis_batch_commands,
    )


async def close_shared_reads(reads: Reads | None) -> None:
    if reads is not None:
        await reads.close()  # lets the replies in flight arrive


def open_cache(settings: Settings, dim: int, reads: Reads | None, breaker: CircuitBreaker | None) -> EmbeddingCache:
    """In Redis when the service has Redis (`reads`: `open_shared_reads`; `breaker`: Redis's one breaker), else
    in process."""
    if settings.redis_url and reads is not None and breaker is not None:
        return RedisEmbeddingCache(
            settings.redis_url,
            settings.cache_ttl_s,
            dim,
            socket_timeout_s=settings.redis_socket_timeout_s,
            connect_timeout_s=settings.redis_connect_timeout_s,
            pool_size=settings.redis_pool_size,
            breaker=breaker,
            reads=reads,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
        )
    return LocalEmbeddingCache(settings.local_cache_size, settings.cache_ttl_s, dim)


def open_event_cache(settings: Settings, reads: Reads | None, breaker: CircuitBreaker | None) -> EventCache:
    """Recent events cached in Redis when the service has Redis (`reads`: `open_shared_reads`; `breaker`: Redis's
    one breaker), else in process."""
    if settings.redis_url and reads is not None and breaker is not None:
        return RedisEventCache(
            settings.redis_url,
            settings.events_per_user,
            settings.events_ttl_s,
            timeout_s=settings.events_redis_timeout_s,
            pool_size=settings.redis_pool_size,
            reads=reads,
            breaker=breaker,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
        )
    return LocalEventCache(settings.events_per_user, settings.events_local_users)


def open_records(settings: Settings) -> Records:
    return Records(
        settings.database,
        timeout_s=settings.database_timeout_s,
        threads=settings.database_threads,
        recent=settings.events_per_user,
        breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
        read_timeout_s=settings.database_read_timeout_s,
    )
