"""The one place that orders the stages: user encoding -> retrieval -> filtering -> ranking -> top k.

`Pipeline` is synchronous numpy in / numpy out and is what offline evaluation calls. `Recommender` is its
asynchronous front for the API: the embedding cache on the event loop, the blocking ONNX Runtime / FAISS
work in a thread pool, and the stage timings and counts into the metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from service.batching import MicroBatcher
from service.bundle import Bundle, variant_name
from service.cache import CacheResult, EmbeddingCache
from service.catalogue import ARRAYS, Catalogue
from service.events import DISLIKE_PREFIX, EventCache, EventReadFailed, EventStoreUnavailable
from service.features import history_window
from service.filtering import filter_candidates, top_k
from service.metrics import Metrics
from service.ranking import Ranker
from service.records import NewEvent, Records, RecordsUnavailable
from service.refresh import Refresher
from service.retrieval import Retriever
from service.runtime import faiss_gpus, model_precisions, onnx_providers, open_session
from service.settings import Settings
from service.similar import SimilarItems, SimilarityWeights, co_consumed, rank_similar
from service.user_encoder import UNKNOWN_USER, UserEncoder

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Recommendations:
    items: np.ndarray  # (k,) item indices, best first
    retrieval_scores: np.ndarray  # (k,) float32
    ranking_scores: np.ndarray  # (k,) float32
    n_retrieved: int
    n_after_filter: int
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, the stages this request took part in
    window: np.ndarray | None = None  # (L,) the history window the ranker saw (for explanations)
    embedding: np.ndarray | None = None  # (E,) the user embedding it was retrieved with
    encoded: bool = False  # whether that embedding was computed here (not given)
    batch_size: int = 1  # users in the batch this answer was computed in
    batch_timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, of the batch as a whole
    started: float = 0.0  # time.perf_counter() when its batch began (the queue wait ends)


@dataclass(frozen=True, slots=True)
class Query:
    """One user's request to `Pipeline.recommend_batch`."""

    user: int  # user index, -1 = unknown
    embedding: np.ndarray | None  # (E,); None: encode the user from `history` in the batch
    k: int
    num_candidates: int
    exclude: np.ndarray | None = None  # item indices never to return
    history: np.ndarray | None = None  # item indices, oldest first; None: the bundle's history


class Pipeline:
    def __init__(
        self,
        bundle: Bundle,
        encoder: UserEncoder,
        retriever: Retriever,
        ranker: Ranker,
        onnx_providers: list[str] | None = None,
        onnx_precisions: dict[str, str] | None = None,
        allow_repeats: bool = False,
    ) -> None:
        self.bundle = bundle
        # False: every item of the user's data (any rating) and fresh events is filtered as already seen; True:
        # only negative feedback and exclusions are (repeats make sense for re-purchases, music).
        self.allow_repeats = allow_repeats
        self.onnx_providers = onnx_providers or ["CPUExecutionProvider"]
        self.onnx_precisions = onnx_precisions or {"user_tower": "fp32", "ranker": "fp32"}
        self.encoder = encoder
        self.retriever = retriever
        self.ranker = ranker
        self.twins: dict[int, np.ndarray] = {}  # item added live -> the trained items with its content
        self.catalogue: Catalogue | None = None  # the item arrays grown in place, from the first item added live
        # The unknown-user embedding depends on nothing but the model: compute it once.
        self.unknown_user_embedding = encoder.encode(np.array([UNKNOWN_USER]))[0]

    @classmethod
    def open(
        cls,
        bundle: Bundle,
        *,
        device: str = "auto",
        intra_op_threads: int = 1,
        precision: str = "auto",
        io_binding: str = "auto",
        allow_repeats: bool = False,
    ) -> Pipeline:
        """The pipeline on `device` (auto | cpu | cuda), its ONNX models in `precision` (auto | fp32 | fp16, see
        runtime.model_precisions) and called through IO binding per `io_binding` (auto: on CUDA | on | off)."""
        providers = onnx_providers(device)
        precisions = model_precisions(bundle, providers, precision)

        def session(model: str) -> ort.InferenceSession:
            return open_session(bundle.file(variant_name(model, precisions[model])), providers, intra_op_threads)

        user_session, ranker_session = session("user_tower"), session("ranker")
        retriever = Retriever(bundle, faiss_gpus(device))
        return cls(
            bundle,
            UserEncoder(bundle, user_session, io_binding),
            retriever,
            Ranker(bundle, ranker_session, io_binding),
            onnx_providers=user_session.get_providers(),
            onnx_precisions=precisions,
            allow_repeats=allow_repeats,
        )

    @classmethod
    def configured(cls, bundle: Bundle, settings: Settings) -> Pipeline:
        """`open` as the service's settings say (device, ONNX Runtime threads, precision, IO binding)."""
        return cls.open(
            bundle,
            device=settings.device,
            intra_op_threads=settings.ort_intra_op_threads,
            precision=settings.onnx_precision,
            io_binding=settings.ort_io_binding,
            allow_repeats=settings.allow_repeats,
        )

    def user_index(self, user_id: str) -> int:
        return self.bundle.user_index.get(user_id, UNKNOWN_USER)

    def item_indices(self, item_ids: list[str]) -> np.ndarray:
        """Indices of the known ids among `item_ids` (unknown ids cannot be recommended anyway)."""
        index = self.bundle.item_index
        return np.array([index[i] for i in item_ids if i in index], dtype=np.int64)

    def history(self, user: int, fresh: np.ndarray | None = None) -> np.ndarray:
        """The user's history, oldest first: the bundle's training history, then `fresh` events (item indices)."""
        history = self.bundle.history(user)
        return history if fresh is None or not len(fresh) else np.concatenate([history, fresh])

    def blocked(self, user: int, history: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """The items never to recommend to `user` whose history (the bundle's, then fresh events) is `history`:
        the user's negative feedback, `exclude`, and (unless repeats are allowed) the history."""
        parts = [self.bundle.negatives(user), exclude if exclude is not None else history[:0]]
        if not self.allow_repeats:
            parts.append(history)
        return np.concatenate(parts) if any(len(p) for p in parts) else history[:0]

    def encode(self, users: np.ndarray, histories: list[np.ndarray] | None = None) -> np.ndarray:
        return self.encoder.encode(users, histories)  # (B, E)

    def recommend(
        self,
        user: int,
        embedding: np.ndarray | None,
        k: int,
        num_candidates: int,
        exclude: np.ndarray | None = None,
        history: np.ndarray | None = None,
    ) -> Recommendations:
        """Retrieve, filter (already seen + `exclude`), rank and keep the top k for one user. `embedding` None:
        encode the user from `history`. `history` (item indices, oldest first) defaults to the bundle's; pass
        `self.history(user, fresh)` for fresh events."""
        return self.recommend_batch([Query(user, embedding, k, num_candidates, exclude, history)])[0]

    def recommend_batch(self, queries: Sequence[Query]) -> list[Recommendations]:
        """`recommend` for several users at once: one user-encoder call for those without an embedding, one
        FAISS search, one ranker call. Each answer is the one `recommend` gives that user alone."""
        t0 = time.perf_counter()
        histories = [self.bundle.history(q.user) if q.history is None else q.history for q in queries]
        missing = [j for j, q in enumerate(queries) if q.embedding is None]
        embeddings: list[np.ndarray] = [q.embedding for q in queries]  # type: ignore[misc]
        if missing:
            users = np.array([queries[j].user for j in missing], dtype=np.int64)
            encoded = self.encoder.encode(users, [histories[j] for j in missing])
            for row, j in enumerate(missing):
                embeddings[j] = encoded[row]
        t1 = time.perf_counter()
        # Ask for enough candidates that filtering the seen items still leaves num_candidates to rank.
        blocked = [self.blocked(q.user, h, q.exclude) for q, h in zip(queries, histories, strict=True)]
        wanted = [q.num_candidates + len(b) for q, b in zip(queries, blocked, strict=True)]
        found = self.retriever.search_each(np.stack(embeddings), wanted)
        t2 = time.perf_counter()
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        for q, b, n, (scores, items) in zip(queries, blocked, wanted, found, strict=True):
            items_kept, scores_kept = filter_candidates(items[:n], scores[:n], b)
            kept.append((items_kept[: q.num_candidates], scores_kept[: q.num_candidates]))
        windows = [history_window(h, self.encoder.history_length) for h in histories]
        t3 = time.perf_counter()
        rankings = self.ranker.score_batch(
            [(q.user, h, c, s) for q, h, (c, s) in zip(queries, histories, kept, strict=True)]
        )
        t4 = time.perf_counter()
        batch_timings = {"retrieval": t2 - t1, "filtering": t3 - t2, "ranking": t4 - t3}
        if missing:
            batch_timings["user_encoding"] = t1 - t0
        out = []
        for row, (q, (c, s), ranking, window, n) in enumerate(
            zip(queries, kept, rankings, windows, wanted, strict=True)
        ):
            best = top_k(ranking, q.k)
            # Per request, the stages it took part in (each lasted the batch's stage for it): a request whose
            # embedding was given has no user_encoding, whoever else in its batch was encoded.
            timings = {stage: seconds for stage, seconds in batch_timings.items() if stage != "user_encoding"}
            if q.embedding is None:
                timings["user_encoding"] = t1 - t0
            out.append(
                Recommendations(
                    items=c[best],
                    retrieval_scores=s[best],
                    ranking_scores=ranking[best],
                    n_retrieved=int((found[row][1][:n] >= 0).sum()),
                    n_after_filter=len(c),
                    timings=timings,
                    window=window,
                    embedding=embeddings[row],
                    encoded=q.embedding is None,
                    batch_size=len(queries),
                    batch_timings=batch_timings,
                    started=t0,
                )
            )
        return out

    def add_items(
        self,
        ids: list[str],
        titles: list[str],
        dense: np.ndarray,
        embeddings: np.ndarray,
        twins: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Append items added live (not in the bundle): they join the catalogue (no popularity, no co-occurrence
        neighbours yet) and the index, recommendable and findable as similar from the next request on. Their
        rows go into the catalogue's spare room (service.catalogue: no copy of the item arrays per call) and a
        new bundle object holding views one item range longer replaces this one: a request in flight keeps
        its consistent view. Callers serialise calls (LiveItems holds a lock). `twins`: per item, the trained
        items whose content it has (it took their place); its similar items then blend in their co-consumption."""
        b = self.bundle
        if self.catalogue is None:
            self.catalogue = Catalogue(b.item_ids, b.item_titles, {name: getattr(b, name) for name in ARRAYS})
        n, k = len(ids), b.item_neighbours.shape[1]
        zeros = np.zeros(n, dtype=np.float32)
        views = self.catalogue.append(
            ids,
            titles,
            {
                "item_embeddings": embeddings.astype(np.float32),
                "item_dense": dense.astype(np.float32),
                "item_log_popularity": zeros,
                "item_recent_popularity": zeros,
                "item_neighbours": np.full((n, k), -1, dtype=np.int32),
                "item_neighbour_weights": np.zeros((n, k), dtype=np.float32),
            },
        )
        for j, found in enumerate(twins or []):
            if len(found):
                self.twins[len(b.item_ids) + j] = np.asarray(found, dtype=np.int64)
        bundle = replace(b, **views)  # type: ignore[arg-type]
        # The catalogue first, then the index: any id the index returns is then in the bundle a request reads.
        self.bundle = self.encoder.bundle = self.ranker.bundle = bundle
        self.retriever.add(embeddings)

    def similar(
        self, item: int, k: int, exclude: np.ndarray | None = None, weights: SimilarityWeights | None = None
    ) -> SimilarItems:
        """The k items most similar to `item` (itself and `exclude` left out), best first: the bundle's blend of
        two-tower cosine and co-consumption (service.similar; `weights` overrides the manifest's)."""
        spec = self.bundle.manifest.similar_items
        weights = weights or SimilarityWeights(spec.embedding_weight, spec.co_consumption_weight)
        blocked = np.array([item], dtype=np.int64) if exclude is None else np.r_[item, exclude].astype(np.int64)
        _, candidates = self.retriever.search(
            self.bundle.item_embeddings[item][None, :], max(k, spec.candidates) + len(blocked)
        )
        co_items, co_weights = self.co_consumption(item)
        return rank_similar(item, candidates[0], self.bundle.item_embeddings, co_items, co_weights, weights, k, blocked)

    def co_consumption(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """What liking `item` predicts (service.similar.co_consumed). An item added live with a trained item's
        content has that item's: the original's list, the original itself first (it is the same content)."""
        originals = self.twins.get(item)
        if originals is None:
            return co_consumed(self.ranker.neighbours, item)
        lists = [co_consumed(self.ranker.neighbours, int(o)) for o in originals]
        rest = np.concatenate([np.zeros(0, np.float32), *(w for _, w in lists)])
        top = float(rest.max()) if len(rest) else 1.0
        items = np.concatenate([originals, *(i for i, _ in lists)])
        weights = np.concatenate([np.full(len(originals), top, dtype=np.float32), rest])
        unique, first = np.unique(items, return_index=True)  # an item on several lists: its first entry
        return unique, weights[first]

    def retrieve(self, users: np.ndarray, embeddings: np.ndarray, k: int) -> list[np.ndarray]:
        """Retrieval stage alone for a batch (for evaluation): top k by two-tower score, seen items removed."""
        blocked = [self.blocked(int(u), self.bundle.history(int(u))) for u in users]
        _, items = self.retriever.search(embeddings, k + max((len(b) for b in blocked), default=0))
        out = []
        for row, b in enumerate(blocked):
            kept, _ = filter_candidates(items[row], np.zeros(len(items[row]), np.float32), b)
            out.append(kept[:k])
        return out


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
        num_candidates: int,
        events: EventCache | None = None,
        batching: BatchingOptions | None = None,
        records: Records | None = None,
        refresh_batch: int = 100,
        refresh_pending: int = 1000,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.events = events  # the recent-events cache of `records`, the system of record
        self.records = records
        self.metrics = metrics
        self.executor = executor
        self.num_candidates = num_candidates
        self.key_prefix = f"reco:{pipeline.bundle.version}:user_emb:"
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

    async def recent_entries(self, user_id: str) -> list[str]:
        """The user's latest events: from the cache, else from the database (then cached for the next
        request). Neither answering: none (the request is served from the bundle's history, and counted)."""
        entries: list[str] | None = None
        if self.events is not None:
            try:
                entries = await self.events.recent(user_id)
            except EventReadFailed as e:
                self.metrics.event_store_errors.labels("read_bypass" if e.bypassed else "read").inc()
        if entries is not None or self.records is None:
            return entries or []
        records = self.records
        try:
            entries = await records.run(lambda: records.recent_entries(user_id), timeout_s=records.read_timeout_s)
        except RecordsUnavailable:
            self.metrics.event_store_errors.labels("database_read").inc()
            return []
        if self.events is not None and not await self.events.fill(user_id, entries, overwrite=False):
            self.metrics.event_store_errors.labels("cache_write").inc()
        return entries

    async def fresh_history(self, user_id: str) -> FreshHistory:
        return self.fresh_from(await self.recent_entries(user_id))

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
        self, user: int, user_id: str
    ) -> tuple[FreshHistory, tuple[np.ndarray | None, CacheResult | None, str | None]]:
        """The user's fresh events and cached embedding. The embedding's key depends on the events, so a known
        user's embedding is read at the same time as the events, under the key it has without fresh events
        (most users, most of the time): the two reads are in flight together (one round trip's wait instead of
        two, each on its own client) and only a user with fresh events reads again."""
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

    async def compute_embedding(self, user: int, history: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        embedding: np.ndarray = (await self.run_blocking(lambda: self.pipeline.encode(np.array([user]), [history])))[0]
        self.metrics.stage_latency.labels("user_encoding").observe(time.perf_counter() - t0)
        return embedding

    async def recommend(self, user_id: str, k: int, exclude_item_ids: list[str]) -> RecommendationResult:
        pipeline = self.pipeline
        user = pipeline.user_index(user_id)
        fresh, (embedding, cache_result, key) = await self.fresh_and_cached(user, user_id)
        if user == UNKNOWN_USER and fresh.empty:
            self.metrics.fallbacks.labels("unknown_user").inc()
        history = pipeline.history(user, fresh.interactions)
        exclude = np.r_[pipeline.item_indices(exclude_item_ids), fresh.disliked].astype(np.int64)
        # A cache miss is encoded in the batch, with the other requests' encodings.
        submitted = time.perf_counter()
        recs = await self.batcher.submit(Query(user, embedding, k, self.num_candidates, exclude, history))
        self.metrics.stage_latency.labels("queue").observe(max(0.0, recs.started - submitted))
        if recs.encoded and key is not None and recs.embedding is not None:
            await self.store_embedding(key, recs.embedding)
        for stage, seconds in recs.timings.items():
            self.metrics.stage_latency.labels(stage).observe(seconds)
        self.metrics.candidates.labels("retrieved").observe(recs.n_retrieved)
        self.metrics.candidates.labels("after_filtering").observe(recs.n_after_filter)
        return RecommendationResult(user, recs, cache_result, len(fresh.interactions) + len(fresh.disliked))

    async def close(self) -> None:
        """Stop the background refreshes (a reload replaced this bundle, or the service stops)."""
        await self.refresher.close()

    async def delete_user(self, user_id: str) -> tuple[int, int]:
        """Delete everything held about the user: their events and row in the database, their cached events and
        every cached embedding (any bundle version): (events deleted, embeddings deleted). The database goes
        first; an embedding cached in between is keyed by the events' digest and is deleted right after. Raises
        EventStoreUnavailable or CacheUnavailable: nothing may be assumed deleted, retry."""
        deleted = 0
        if self.records is not None:
            records = self.records
            try:
                deleted = await records.run(lambda: records.delete_user(user_id), guarded=False)
            except RecordsUnavailable as e:
                raise EventStoreUnavailable(str(e)) from e
        if self.events is not None:
            await self.events.delete(user_id)
        await self.refresher.forget(user_id)  # a refresh in progress finishes first: what it stored is deleted
        return deleted, await self.cache.delete_user(user_id)

    async def record_events(self, events: list[NewEvent]) -> int:
        """Store `events` (in order) in the database and refresh each user's cached events from what the
        database holds, so the next request finds them; their embeddings are recomputed after the answer
        (`refresher`). The number of events that were new (a retried event_id is stored once). Raises
        EventStoreUnavailable if the database did not take them (nothing was written)."""
        if self.records is None:
            raise EventStoreUnavailable("no database is configured")
        records = self.records
        try:
            new, held = await records.append_events(events)
        except RecordsUnavailable as e:
            raise EventStoreUnavailable(str(e)) from e
        todo = []
        changed = {e.user_id for e, is_new in zip(events, new, strict=True) if is_new}  # a retry changes nothing
        for user_id, entries in held.items():
            if self.events is not None and not await self.events.fill(user_id, entries, overwrite=True):
                self.metrics.event_store_errors.labels("cache_write").inc()
            fresh = self.fresh_from(entries)
            if user_id in changed and not fresh.empty:
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
