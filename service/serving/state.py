"""The app's typed state: every resource the lifespan opens, in one object, and its `Depends` alias."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from service.core.bundle import Bundle, BundleError, load_bundle
from service.core.device import freeze_heap, limit_native_threads
from service.core.errors import Conflict, NotReady, Overloaded
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.core.threads import LifoThreadPool
from service.experiments.design import CONTROL, Experiment, Experiments, Variant
from service.experiments.exploration import Exposure
from service.experiments.impressions import ImpressionLog
from service.items.live_items import LiveItems
from service.recommend.pipeline import Pipeline
from service.recommend.recommender import Recommender
from service.serving.resources import (
    Serving,
    close_shared_reads,
    open_cache,
    open_event_cache,
    open_records,
    open_serving,
    open_shared_reads,
    precision_label,
)
from service.serving.variants import VariantServings
from service.store import registry
from service.store.breaker import CircuitBreaker
from service.store.cache import EmbeddingCache
from service.store.events import EventCache
from service.store.forgotten import Forgotten
from service.store.records import Records, RecordsUnavailable
from service.store.redis_batch import Reads
from service.store.schema import migrate

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    serving: Serving
    cache: EmbeddingCache
    executor: Executor
    events: EventCache
    records: Records  # the system of record (events, users, deletions)
    ready: bool = False  # loaded and warmed up: requests are served
    draining: bool = False  # SIGTERM received: still serving, but /readyz says 503 so traffic moves away
    in_flight: int = 0
    previous_bundle: Path | None = None  # what a rollback goes back to
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    redis_reads: Reads | None = None  # shared by both Redis caches; closed after them
    redis_breaker: CircuitBreaker | None = None  # the one breaker in front of every Redis call (None: no Redis)
    _refreeze: asyncio.Task[None] | None = None  # freezes the heap again after a reload (`refreeze_after_reload`)
    forgotten: Forgotten = field(default_factory=Forgotten)  # deleted users, masked in every bundle served
    experiments: Experiments = field(default_factory=Experiments)  # the running experiment (its follower's)
    impressions: ImpressionLog | None = None  # every list served, into the database (None: RECO_IMPRESSIONS off)
    exposure: Exposure = field(default_factory=Exposure)  # items shown by this process: exploration's weights
    rng: np.random.Generator = field(default_factory=np.random.default_rng)  # exploration's draws
    variants: VariantServings = field(init=False)  # bundles the running experiment's variants name, beside this one

    def __post_init__(self) -> None:
        self.variants = VariantServings(lambda v: self.open_bundle(self.settings.reload_root / v), self.metrics)

    @property
    def bundle(self) -> Bundle:
        return self.serving.pipeline.bundle

    @property
    def pipeline(self) -> Pipeline:
        return self.serving.pipeline

    @property
    def recommender(self) -> Recommender:
        return self.serving.recommender

    @property
    def live_items(self) -> LiveItems:
        return self.serving.live_items

    def servings(self) -> list[Serving]:  # the published bundle, then those experiment variants name
        return [self.serving, *self.variants.servings.values()]

    def assign(self, user_id: str) -> tuple[str | None, Variant, Serving]:
        """(the running experiment or None, the user's variant, the bundle serving it). A variant whose bundle this
        process has not opened (yet, or at all) is served the published bundle outside the experiment."""
        experiment, variant = self.experiments.assign(user_id)
        if variant.bundle is None or variant.bundle == self.bundle.version:
            return experiment, variant, self.serving
        serving = self.variants.get(variant.bundle)
        if serving is None:
            return None, CONTROL, self.serving
        return experiment, variant, serving

    async def prepare_experiment(self, experiment: Experiment | None) -> None:
        """Open the bundles `experiment`'s variants name (close those no running experiment names)."""
        await self.variants.follow(experiment.bundles if experiment is not None else set(), self.bundle.version)

    @contextlib.asynccontextmanager
    async def admit(self, deadline: bool = True) -> AsyncIterator[None]:
        """Admission control: past `max_in_flight` requests in progress a request is turned away at once (503,
        Retry-After) instead of queueing without bound; with `deadline`, one that takes longer than
        `request_timeout_s` is abandoned (a batch that has not started drops it) and answered 503."""
        settings = self.settings
        if self.in_flight >= settings.max_in_flight:
            self.metrics.rejected.labels("overload").inc()
            raise Overloaded(f"{self.in_flight} requests in flight (RECO_MAX_IN_FLIGHT={settings.max_in_flight})")
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            if not deadline:
                yield
                return
            try:
                async with asyncio.timeout(settings.request_timeout_s):
                    yield
            except TimeoutError as e:
                self.metrics.rejected.labels("deadline").inc()
                raise Overloaded(f"not answered within RECO_REQUEST_TIMEOUT_S={settings.request_timeout_s}") from e
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> AppState:
        """Load and validate the bundle, open the models, index and cache, and warm up. Blocking work (hashing,
        reading, session creation) runs in the thread pool, so the event loop stays responsive."""
        # OpenMP's thread count is per calling thread: set in each compute thread (FAISS runs there) too.
        limit_native_threads(settings.faiss_omp_threads)
        pool = LifoThreadPool if settings.compute_pool == "lifo" else ThreadPoolExecutor
        executor: Executor = pool(
            settings.worker_threads,
            thread_name_prefix="reco-compute",
            initializer=limit_native_threads,
            initargs=(settings.faiss_omp_threads,),
        )
        cache: EmbeddingCache | None = None
        events: EventCache | None = None
        records: Records | None = None
        reads = open_shared_reads(settings)
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s) if reads is not None else None
        loop = asyncio.get_running_loop()
        try:
            if settings.database_migrate:
                await loop.run_in_executor(executor, migrate, settings.database)
            records = open_records(settings)
            forgotten = Forgotten()
            try:
                await take_deletions(records, forgotten)
            except RecordsUnavailable as e:  # the follower reads them once the database answers
                log.warning("user deletions not read yet (%s): deleted users are masked once the database answers", e)
            bundle = await loop.run_in_executor(executor, load_bundle, settings.bundle_path)
            cache = open_cache(settings, bundle.manifest.dims.embedding_dim, reads, breaker)
            events = open_event_cache(settings, reads, breaker)
            serving = await open_serving(bundle, settings, metrics, executor, cache, events, records, forgotten)
        except BaseException:
            if cache is not None:
                await cache.close()
            if events is not None:
                await events.close()
            if records is not None:
                records.close()
            await close_shared_reads(reads)
            executor.shutdown(wait=False)
            raise
        state = cls(
            settings,
            metrics,
            serving,
            cache,
            executor,
            events,
            records,
            redis_reads=reads,
            redis_breaker=breaker,
            forgotten=forgotten,
        )
        if settings.impressions:
            state.impressions = ImpressionLog(records, metrics, max_pending=settings.impressions_max_pending)
            state.impressions.start()
        log.info("froze %d objects out of the garbage collector's passes", freeze_heap())
        state.ready = True
        metrics.ready.set(1)
        state.publish()
        return state

    def publish(self) -> None:
        """The served bundle into the metrics and the log."""
        bundle, pipeline = self.bundle, self.pipeline
        self.metrics.index_items.set(pipeline.retriever.n_items)
        self.metrics.bundle_created.set(bundle.manifest.created_at.timestamp())
        self.metrics.bundle.info(
            {
                "version": bundle.version,
                "schema_version": str(bundle.manifest.schema_version),
                "created_at": bundle.manifest.created_at.isoformat(),
                "onnx_provider": pipeline.onnx_providers[0],
                "onnx_precision": precision_label(pipeline.onnx_precisions),
                "faiss_device": pipeline.retriever.device,
            }
        )
        log.info(
            "serving bundle %s (%d items, %d users) on %s (%s) / faiss %s",
            bundle.version,
            bundle.manifest.dims.n_items,
            bundle.manifest.dims.n_users,
            pipeline.onnx_providers[0],
            precision_label(pipeline.onnx_precisions),
            pipeline.retriever.device,
        )

    async def reload(self, path: Path | None = None, *, this_process: bool = False) -> tuple[str, str]:
        """Load the bundle at `path` (default: the configured bundle path, e.g. a `current` symlink re-pointed)
        beside the one serving, warm it up, and swap it in at once; requests in flight finish on the old one.
        Raises BundleError (the old bundle keeps serving) if it does not validate. Returns (old, new) versions.
        `this_process`: the registry follower's reload, which every process makes for itself (an admin's
        reload would reach one process of several, and is refused then)."""
        if self.settings.workers > 1 and not this_process:
            raise Conflict(
                f"RECO_WORKERS={self.settings.workers}: a reload would reach only the process that took this "
                "request; restart the service (a rolling restart) to serve another bundle"
            )
        if self._reloading.locked():
            raise Conflict("a reload is already in progress")
        async with self._reloading:
            t0 = time.perf_counter()
            serving = await self.open_bundle(path or self.settings.bundle_path)
            bundle, old = serving.bundle, self.serving
            self.serving = serving  # one assignment: every request from here on sees the new bundle
            await old.recommender.close()
            self.refreeze_after_reload()
            self.previous_bundle = old.bundle.path
            self.metrics.reloads.labels("ok").inc()
            self.publish()
            log.info("reloaded %s -> %s in %.2fs", old.bundle.version, bundle.version, time.perf_counter() - t0)
            return old.bundle.version, bundle.version

    async def open_bundle(self, path: Path) -> Serving:
        """The bundle at `path` loaded, validated (its embedding size must be the one served: the cache holds that
        size) and warmed up beside the one serving. Raises BundleError."""
        bundle = await asyncio.get_running_loop().run_in_executor(self.executor, load_bundle, path)
        dim, served_dim = bundle.manifest.dims.embedding_dim, self.bundle.manifest.dims.embedding_dim
        if dim != served_dim:
            raise BundleError(f"{bundle.path}: embedding_dim {dim} != {served_dim} served; restart to change it")
        args = (self.settings, self.metrics, self.executor, self.cache, self.events, self.records, self.forgotten)
        return await open_serving(bundle, *args)

    def refreeze_after_reload(self) -> None:
        """Thaw the heap now (the bundle just replaced becomes collectable once its last request is done) and
        freeze it again once no request can still hold that bundle (`request_timeout_s`: they are abandoned by
        then). A reload meanwhile starts this again."""
        gc.unfreeze()
        if self._refreeze is not None:
            self._refreeze.cancel()

        async def later() -> None:
            await asyncio.sleep(self.settings.request_timeout_s + 1)
            freeze_heap()

        self._refreeze = asyncio.create_task(later(), name="reco-refreeze")

    async def follow_published_bundle(self) -> None:
        """Every `bundle_sync_s`, ask the bundle registry (service.store.registry) which bundle is published and the
        last retrains' results (into the metrics); a published version this process does not serve is loaded
        from under the bundles root through `reload` (validated, warmed, swapped): every replica and process
        converges on it. A version that does not load is logged and counted once, not retried until the
        registry names another. Runs until cancelled."""
        refused: str | None = None
        engine = self.records.engine

        def ask() -> tuple[registry.Entry | None, list[registry.Retrain]]:
            return registry.published(engine), registry.last_retrains(engine)

        while True:
            await asyncio.sleep(self.settings.bundle_sync_s)
            try:
                entry, runs = await self.records.run(ask)
            except RecordsUnavailable:  # the database away: the next round asks again
                continue
            self.observe_retrains(runs)
            if entry is None or entry.version in (self.bundle.version, refused):
                continue
            path = self.settings.reload_root / entry.version
            try:
                old, new = await self.reload(path, this_process=True)
            except Conflict:  # a reload began meanwhile: the next round looks again
                continue
            except Exception as e:  # an unloadable bundle (BundleError, OSError, ...) must not end the loop
                refused = entry.version
                self.metrics.reloads.labels("refused").inc()
                log.error("the published bundle %s could not be loaded from %s: %s", entry.version, path, e)
                continue
            log.info("following the registry: %s -> %s", old, new)

    async def follow_deletions(self) -> None:
        """Every `bundle_sync_s` (10 s if 0), take the user deletions other processes and replicas recorded:
        those users are masked in the bundle served (`service.store.forgotten`) and dropped from this process's
        own caches. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.settings.bundle_sync_s or 10.0)
            try:
                changed = await take_deletions(self.records, self.forgotten)
            except RecordsUnavailable:  # the database away: the next round asks again
                continue
            for user_id in changed:
                for serving in self.servings():
                    await serving.recommender.forget_locally(user_id)
            if changed:
                log.info("%d users deleted by other processes are now masked", len(changed))

    def observe_retrains(self, runs: list[registry.Retrain]) -> None:
        """The registry's latest retrain runs (newest first) into the retrain gauges."""
        if not runs:
            return
        m = self.metrics
        m.retrain_finished.set(runs[0].finished_at)
        m.retrain_duration.set(runs[0].finished_at - runs[0].started_at)
        succeeded = next((r for r in runs if r.result != "failed"), None)
        if succeeded is not None:
            m.retrain_succeeded.set(succeeded.finished_at)
        m.retrain_failures.set(next((n for n, r in enumerate(runs) if r.result != "failed"), len(runs)))

    async def follow_live_items(self) -> None:
        """Every `live_items_sync_s`, add the items other processes and replicas stored (in the database: read in
        its threads, behind its breaker; or in the delta file: each appends what it is sent). Runs until
        cancelled."""
        while True:
            await asyncio.sleep(self.settings.live_items_sync_s)
            for serving in self.servings():  # (the bundles experiment variants name take them too)
                await self._take_live_items(serving.live_items)

    async def _take_live_items(self, live: LiveItems) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.settings.live_items_store == "database":
                stored = await self.records.run(functools.partial(self.records.live_items_after, live.seq))
                added = await loop.run_in_executor(self.executor, live.apply_stored, stored) if stored else 0
            else:
                added = await loop.run_in_executor(self.executor, live.sync) if live.behind() else 0
        except RecordsUnavailable:  # the database away: the next round asks again
            return
        except Exception:  # an unreadable file must not end the loop; the next round retries
            log.exception("following the live items failed")
            return
        if added:
            self.metrics.index_items.set(self.pipeline.retriever.n_items)
            log.info("added %d live items another process took", added)

    async def close(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self._refreeze is not None:
            self._refreeze.cancel()
        gc.unfreeze()  # what this state held can be collected (another app in the process, as in tests)
        await self.recommender.close()
        await self.variants.close()
        if self.impressions is not None:
            await self.impressions.close()
        await self.cache.close()
        await self.events.close()
        await close_shared_reads(self.redis_reads)
        self.records.close()
        self.executor.shutdown(wait=True)
        self.metrics.process_exited()


async def take_deletions(records: Records, forgotten: Forgotten) -> list[str]:
    """The deletions recorded since `forgotten` last looked, into it: the users newly deleted. Raises
    RecordsUnavailable."""
    rows = await records.run(functools.partial(records.deletions_after, forgotten.last_id))
    return forgotten.take(rows)


async def get_state(request: Request) -> AppState:
    """Async so FastAPI calls it on the event loop (a sync dependency costs a thread-pool hop per request)."""
    state: AppState | None = getattr(request.app.state, "reco", None)
    if state is None or not state.ready:
        raise NotReady("the service is not ready (bundle loading or shutting down)")
    return state


StateDep = Annotated[AppState, Depends(get_state)]
