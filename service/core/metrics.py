"""Prometheus metrics. One registry per app, so several apps (tests) never clash; no user ids in labels.

With several server processes (`RECO_WORKERS`, `python -m service`) prometheus_client runs in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR set before it is imported): every process writes its samples to files there and
`exposition` aggregates them, so a scrape that reaches any one process sees the whole service: counters and
histograms summed, gauges by their `multiprocess_mode` over the live processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set: several processes share their samples through files there

# Sub-millisecond stages through to slow requests.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COUNT_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
STAGES = ("cache", "queue", "user_encoding", "retrieval", "filtering", "ranking")  # per request
BATCH_STAGES = ("user_encoding", "retrieval", "filtering", "ranking")  # per micro-batch


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reco_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "reco_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "reco_stage_duration_seconds",
            "Per request, the time it spent in each pipeline stage it took part in (queue: waiting for its "
            "micro-batch; user_encoding only when its embedding was computed).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_stage_latency = Histogram(
            "reco_batch_stage_duration_seconds",
            "Per micro-batch, once, the time of each stage (user_encoding only when a request in it missed).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "reco_cache_requests",
            "Embedding cache lookups and failed writes by result (hit, miss, error, bypass; dropped: a write not "
            "made, too many in flight).",
            ["result"],
            registry=r,
        )
        self.cache_breaker_open = Gauge(
            "reco_cache_breaker_open",
            "1 while the Redis circuit breaker is open (Redis is skipped by the embedding and recent-events caches).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.candidates = Histogram(
            "reco_candidates",
            "Candidates per request after retrieval and after filtering.",
            ["stage"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "reco_batch_size",
            "Requests computed together per micro-batch (service.core.batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.reloads = Counter(
            "reco_bundle_reloads",
            "Bundle reloads (POST /admin/reload, /admin/rollback, following the registry, and the bundles experiment "
            "variants open) by result.",
            ["result"],
            registry=r,
        )
        self.in_flight = Gauge(
            "reco_in_flight", "Requests in progress (admission control).", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter(
            "reco_rejected",
            "Requests turned away with a 503: overload (too many in flight) or deadline (too slow).",
            ["reason"],
            registry=r,
        )
        self.fallbacks = Counter("reco_fallbacks", "Requests served by a fallback, by reason.", ["reason"], registry=r)
        self.errors = Counter("reco_errors", "Errors by type.", ["type"], registry=r)
        self.events = Counter("reco_events", "User events accepted, by event type.", ["type"], registry=r)
        self.event_store_errors = Counter(
            "reco_event_store_errors",
            "Event operations that failed. read / read_bypass: the recent-events cache (Redis) failed or was skipped "
            "by its breaker (the database was asked instead); database_read: the database did not answer (served "
            "without fresh events); cache_write: the cache was not updated (the database has the events); "
            "write: the database did not take a write (503).",
            ["op"],
            registry=r,
        )
        self.embedding_refreshes = Counter(
            "reco_embedding_refreshes",
            "Users whose embedding was recomputed after their events, off the response path "
            "(service.recommend.refresh), by result: stored; dropped (too many waiting: the next request encodes "
            "it); failed.",
            ["result"],
            registry=r,
        )
        self.item_upserts = Counter(
            "reco_item_upserts", "PUT /v1/items outcomes: created, unchanged, conflict.", ["result"], registry=r
        )
        self.user_deletions = Counter("reco_user_deletions", "Users deleted (DELETE /v1/users).", registry=r)
        self.index_items = Gauge(
            "reco_index_items",
            "Items in the retrieval index (trained + added live).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.bundle = Info("reco_bundle", "The model bundle being served.", registry=r)
        # Several processes: ready only when every live one is (the bundle is the same in all: no reloads there).
        self.bundle_created = Gauge(
            "reco_bundle_created_timestamp_seconds",
            "When the bundle served was built (unix seconds; its age: time() - this).",
            registry=r,
            multiprocess_mode="livemin",  # the oldest any process serves
        )
        self.retrain_finished = Gauge(
            "reco_retrain_last_finished_timestamp_seconds",
            "When the last retrain run (python -m model_export retrain) ended, whatever its result (the registry).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retrain_succeeded = Gauge(
            "reco_retrain_last_success_timestamp_seconds",
            "When the last retrain run that did not fail ended (published, rejected by the gate, or skipped).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retrain_duration = Gauge(
            "reco_retrain_last_duration_seconds",
            "How long the last retrain run took.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retrain_failures = Gauge(
            "reco_retrain_consecutive_failures",
            "Retrain runs that failed since the last one that did not (the registry's latest 20 at most).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.impressions = Counter(
            "reco_impressions",
            "Lists served, as recorded in the system of record off the response path (service.experiments."
            "impressions), by result: stored; duplicate (a request id seen before); dropped (too many waiting); "
            "failed (the database did not take them).",
            ["result"],
            registry=r,
        )
        self.experiment_lists = Counter(
            "reco_experiment_lists",
            "Lists served within an experiment, by experiment and variant.",
            ["experiment", "variant"],
            registry=r,
        )
        self.experiment_events = Counter(
            "reco_experiment_events",
            "Events attributed to a list (their request_id) within an experiment, by experiment, variant and type.",
            ["experiment", "variant", "event_type"],
            registry=r,
        )
        self.explored_slots = Counter(
            "reco_explored_slots",
            "Slots a variant's exploration policy filled with an item the model ranked lower or showed rarely.",
            ["experiment", "variant"],
            registry=r,
        )
        self.bundle_ctr_regression = Gauge(
            "reco_bundle_ctr_regression",
            "1 when the served bundle's live CTR is significantly below that of the bundle served before it "
            "(the post-publish guard, service.experiments.guard), else 0.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "reco_ready", "1 when the service is ready to serve.", registry=r, multiprocess_mode="livemin"
        )
        for stage in STAGES:
            self.stage_latency.labels(stage)
        for stage in BATCH_STAGES:
            self.batch_stage_latency.labels(stage)
        for result in ("hit", "miss", "error", "bypass", "dropped"):
            self.cache_requests.labels(result)
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        for op in ("read", "read_bypass", "database_read", "cache_write", "write"):
            self.event_store_errors.labels(op)
        for reason in ("overload", "deadline"):
            self.rejected.labels(reason)
        for result in ("stored", "dropped", "failed"):
            self.embedding_refreshes.labels(result)
        for result in ("stored", "duplicate", "dropped", "failed"):
            self.impressions.labels(result)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric (of all the server's processes in multiprocess mode) and its
        content type."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated, path=directory)  # type: ignore[no-untyped-call]
        # An Info lives in its process's memory only; every process serves the same bundle, so this one's is it.
        info = self.registry.restricted_registry(["reco_bundle_info"])
        return generate_latest(aggregated) + generate_latest(info), CONTENT_TYPE_LATEST

    def forget_dead_processes(self) -> list[int]:
        """In multiprocess mode, drop the live gauges of processes that died without a clean shutdown (a worker
        uvicorn restarted after a crash), which would otherwise still count in reco_in_flight and reco_ready.
        Called at start-up. Returns their pids."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return []
        dead = set()
        for path in Path(directory).glob("gauge_live*_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                dead.add(pid)
            except PermissionError:  # alive, another user's
                pass
        for pid in dead:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        return sorted(dead)

    def process_exited(self) -> None:
        """In multiprocess mode, drop this process's live gauges (at shutdown)."""
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
