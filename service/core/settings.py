"""The service's one typed configuration object, read from `RECO_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_TOKEN = 16
DEFAULT_TOKENS = {"changeme", "change-me", "admin", "secret", "password", "token", "changemechangeme"}


class Settings(BaseSettings):
    # hide_input_in_errors: a bad setting's message never echoes what was given (a token, a URL with a password).
    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=None, extra="ignore", hide_input_in_errors=True)

    bundle_path: Path = Field(Path("bundles/current"), description="Model bundle directory (or a symlink to one).")
    bundles_root: Path | None = Field(
        None,
        description="POST /admin/reload loads bundles from under this directory only; unset: the directory holding "
        "RECO_BUNDLE_PATH's target (e.g. bundles/ for bundles/current -> bundles/<version>).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the GPU when ONNX Runtime / FAISS see one, else the CPU."
    )

    # Request bounds.
    max_k: int = Field(100, ge=1, le=1000, description="Largest `k` a request may ask for.")
    num_candidates: int | None = Field(
        None,
        ge=1,
        description="Candidates retrieved from FAISS before filtering and ranking; unset: the bundle's "
        "`candidates.depth`, the fewest its exporter found to hold validation NDCG@10 (500 for older bundles).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; beyond it, 413.")
    max_exclusions: int = Field(1000, ge=0, description="Largest `exclude_item_ids` list a request may send.")
    allow_repeats: bool = Field(
        False,
        description="Recommend items the user already interacted with positively (re-purchase, re-listening); "
        "false: every item in the user's data or fresh events is never recommended. Negative feedback (low "
        "ratings, dislikes) and exclusions are never recommended either way.",
    )

    # Embedding cache. No URL: an in-process bounded LRU cache.
    redis_url: str | None = Field(
        None,
        description="e.g. redis://127.0.0.1:6379/0; rediss://host:6380/0 for TLS (query options such as "
        "ssl_ca_certs=/path/ca.pem are passed on); redis://user:pass@host/0 for an ACL user; unset: in process.",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (AUTH / ACL) kept out of the URL (one in the URL takes precedence)."
    )
    cache_ttl_s: int = Field(3600, ge=1, description="TTL of a cached user embedding.")
    local_cache_size: int = Field(100_000, ge=0, description="Entries of the in-process cache (0 disables it).")
    redis_socket_timeout_s: float = Field(0.05, gt=0, description="Per-command Redis timeout.")
    redis_connect_timeout_s: float = Field(0.05, gt=0, description="Redis connect timeout.")
    redis_pool_size: int = Field(32, ge=1)
    redis_batch_commands: bool = Field(
        True,
        description="Send the cache and event reads of concurrent requests as one Redis pipeline (one round "
        "trip) instead of one round trip each.",
    )
    breaker_failures: int = Field(3, ge=1, description="Consecutive Redis errors that open the breaker.")
    breaker_reset_s: float = Field(5.0, gt=0, description="How long an open breaker skips Redis.")

    # The system of record (service.store.records): every acknowledged event, the users heard of, deletions.
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the system of record, e.g. postgresql+psycopg://reco@db:5432/reco (a password "
        "in it stays secret); unset: a SQLite file reco.sqlite3 in the bundles root (one machine only).",
    )
    database_timeout_s: float = Field(
        1.0,
        gt=0,
        description="Bound on each database call (connect, statement, lock wait); beyond it a 503 for a write.",
    )
    database_read_timeout_s: float = Field(
        0.25,
        gt=0,
        description="Bound on a request's read of a user's events from the database (a cache miss); past it the "
        "request goes on without fresh events, well within its own deadline.",
    )
    database_threads: int = Field(4, ge=1, description="Threads that run database calls off the event loop.")
    database_migrate: bool = Field(
        True, description="Apply the schema's Alembic migrations at start (off: run `alembic upgrade head` yourself)."
    )
    # Recent user events (POST /v1/events), a cache of the database's: in Redis when redis_url is set, else in process.
    events_per_user: int = Field(200, ge=1, description="Latest events per user the cache holds and requests read.")
    events_ttl_s: int = Field(30 * 86400, ge=1, description="How long Redis keeps a user's cached recent events.")
    events_local_users: int = Field(100_000, ge=1, description="Users the in-process recent-events cache holds.")
    events_redis_timeout_s: float = Field(
        0.05,
        gt=0,
        description="Per-command timeout of the Redis recent-events cache (a read past it asks the database). It "
        "is also the shared read pipeline's reply timeout when longer than RECO_REDIS_SOCKET_TIMEOUT_S: what the "
        "requests in flight when Redis hangs wait.",
    )
    max_events_per_request: int = Field(1000, ge=1, description="Largest batch POST /v1/events takes.")
    max_event_users_per_request: int = Field(
        100,
        ge=1,
        description="Most distinct users one POST /v1/events may name (their embeddings are recomputed after "
        "it answers, in one batched call).",
    )
    embedding_refresh_max_pending: int = Field(
        1000,
        ge=1,
        description="Most users waiting for their embedding to be recomputed after events (service.recommend.refresh); "
        "past it a refresh is dropped and counted, and the user's next request encodes it instead.",
    )

    # Items added live (PUT /v1/items/{item_id}).
    live_items_path: Path | None = Field(
        None,
        description="With live_items_store=file: the JSON-lines file of items added live, replayed at start-up; "
        "unset: live_items.jsonl next to the bundle path.",
    )
    live_items_store: Literal["database", "file"] = Field(
        "database",
        description="Where items added live are kept: database (the system of record, shared by every replica "
        "and process) or file (live_items_path, one machine only).",
    )
    bundle_sync_s: float = Field(
        10.0,
        ge=0,
        description="How often each process asks the bundle registry (the database) which bundle is published, "
        "and reloads it (from under RECO_BUNDLES_ROOT) when it serves another; 0: never (RECO_BUNDLE_PATH only). "
        "Also how often it takes the user deletions other replicas recorded (every 10 s when 0).",
    )
    live_items_sync_s: float = Field(
        1.0,
        gt=0,
        description="How often each process adds the items other processes and replicas were sent (and the bundles "
        "experiment variants serve beside the published one take the items added).",
    )
    # Online experiments (service.experiments).
    impressions: bool = Field(
        True,
        description="Record every list served (request id, user, items, bundle, experiment variant) in the system "
        "of record, off the response path: what experiments' results and the post-publish guard are computed from.",
    )
    impressions_max_pending: int = Field(
        10_000, ge=1, description="Lists waiting to be written; past it a list's impression is dropped and counted."
    )
    experiments_sync_s: float = Field(
        2.0, gt=0, description="How often each process reads which experiment runs (started or stopped anywhere)."
    )
    guard_min_lists: int = Field(
        1000,
        ge=1,
        description="The post-publish guard compares the served bundle's live CTR with its predecessor's once each "
        "has this many lists recorded.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token the admin routes (/admin/*, PUT /v1/items, DELETE /v1/users) require: at least "
        "16 characters; required unless dev_mode.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key clients send on the other /v1 routes (recommendations, events, similar items): at "
        "least 16 characters; required unless dev_mode or allow_anonymous. The admin token is accepted too.",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve the client /v1 routes without RECO_API_KEY outside dev mode: only behind a gateway "
        "that authenticates clients itself.",
    )
    dev_mode: bool = Field(
        False,
        description="Development: the admin and client routes may be open (no admin token, no API key). Never in "
        "production.",
    )

    http_fast_path: bool = Field(
        True,
        description="POST /v1/recommendations and POST /v1/events answered without FastAPI's router when the body "
        "validates (same responses, less CPU per request; see service.api.fast_path); false: every request through "
        "FastAPI.",
    )
    # The home-made mechanisms beside the library's way, to measure one against the other (benchmarks.mechanisms).
    compute_pool: Literal["lifo", "executor"] = Field(
        "lifo",
        description="The compute threads: lifo, work to the thread idle last (service.core.threads); executor: "
        "concurrent.futures.ThreadPoolExecutor.",
    )
    redis_reads: Literal["pipelined", "client"] = Field(
        "pipelined",
        description="The caches' Redis reads: pipelined, concurrent requests' reads in one round trip on one "
        "connection (service.store.redis_batch); client: redis-py's asyncio client, a pooled connection each.",
    )
    reuse_port: bool = Field(
        True,
        description="With RECO_WORKERS > 1, each worker listens on its own SO_REUSEPORT socket (service.core.sockets); "
        "false: uvicorn's one shared socket.",
    )

    # Logs: JSON lines; user ids only as keyed hashes.
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line; text: plain.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    access_log: bool = Field(True, description="One JSON access record per request (route template, no raw path).")
    log_user_key: str | None = Field(
        None, description="Key of the user-id hash in logs (set it to correlate across restarts); unset: random."
    )

    # Overload: a bounded amount of work, turned away at once beyond it rather than queued without bound.
    max_in_flight: int = Field(
        256, ge=1, description="Requests (recommendations, similar items, events) in progress at once; beyond, 503."
    )
    request_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of a recommendation / similar-items request; past it, 503 (not computed)."
    )

    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM: seconds of serving with readiness 503 before in-flight requests finish "
        "and the process exits (lets load balancers notice; Kubernetes' preStop sleep does the same).",
    )

    # Compute.
    worker_threads: int = Field(4, ge=1, description="Threads that run ONNX Runtime and FAISS off the event loop.")
    ort_intra_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime intra-op threads per session (0 = ORT's choice)."
    )
    onnx_precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="Precision of the user tower and the ranker. auto: on the CPU, int8 weights for the models whose "
        "int8 variant held validation NDCG@10 at export (manifest onnx_int8_served), float32 for the others; on "
        "CUDA float32 (float16 where the bundle has a float16 variant, only once scripts/gpu-check.sh has passed "
        "with it on a GPU); fp32; fp16 opts in and refuses a bundle without the variants; int8: every model's "
        "int8-weight variant (ONNX Runtime dynamic quantisation, for the CPU), refused likewise.",
    )
    ort_io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Call the user tower and the ranker through ONNX Runtime's IO binding (inputs copied to the "
        "device before the run, the output allocated there). auto: off (on CUDA once scripts/gpu-check.sh has "
        "passed with it on a GPU); on opts in.",
    )
    faiss_omp_threads: int = Field(
        1,
        ge=0,
        description="OpenMP threads for CPU FAISS (0 = FAISS's choice). 1: requests already run in parallel, and "
        "OpenMP's spinning threads on shared cores made a 10K-item search 20x slower.",
    )
    batch_max_size: int = Field(
        16, ge=1, description="Most recommendation requests computed together (micro-batching); 1 = off."
    )
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="How long a batch waits for company; 0 = only what queued while the last ran."
    )
    batch_workers: int | None = Field(
        None,
        ge=1,
        description="Recommendation batches computed at once per process (<= worker_threads). Unset: 2 with one "
        "worker process (its batches then use both cores of a 2-core machine), 1 with several (a batch loop each, "
        "fewer threads per core; measured at 100K items, 2 processes on 2 cores: 882 against 706-811 req/s at "
        "concurrency 32, p99 53-57 against 86-110 ms).",
    )
    warmup_requests: int = Field(3, ge=0, description="Pipeline runs at start-up before readiness turns green.")
    workers: int = Field(
        1,
        ge=1,
        description="Server processes (`python -m service`; each loads the bundle: memory x workers). One process "
        "is held to about one core by Python's GIL; on a CPU-only machine, one per core. Needs Redis (shared "
        "cache and events); metrics are aggregated over the processes (Prometheus multiprocess mode); the "
        "admin reload and rollback are refused (restart instead).",
    )

    @property
    def reload_root(self) -> Path:
        """The directory reloads may load from (resolved: symlinks followed)."""
        return (self.bundles_root or self.bundle_path.resolve().parent).resolve()

    @property
    def database(self) -> str:
        """The database URL in use (the SQLite default resolved)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.reload_root / 'reco.sqlite3'}"

    @property
    def batch_loops(self) -> int:
        """`batch_workers`, or its default for this many worker processes."""
        chosen = self.batch_workers if self.batch_workers is not None else (2 if self.workers == 1 else 1)
        return min(chosen, self.worker_threads)

    @model_validator(mode="after")
    def _workers_share_redis(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                "RECO_WORKERS > 1 needs RECO_REDIS_URL: each process would otherwise keep its own cache and its "
                "own user events, and a user's events would reach only the process that took them"
            )
        return self

    @model_validator(mode="after")
    def _tokens_outside_dev_mode(self) -> Settings:
        for name, secret in (("RECO_ADMIN_TOKEN", self.admin_token), ("RECO_API_KEY", self.api_key)):
            value = secret.get_secret_value() if secret is not None else None
            if value is not None and (len(value) < MIN_ADMIN_TOKEN or value.lower() in DEFAULT_TOKENS):
                raise ValueError(
                    f"{name} must be at least {MIN_ADMIN_TOKEN} characters and not a default value "
                    "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        if self.admin_token is None and not self.dev_mode:
            raise ValueError(
                "RECO_ADMIN_TOKEN is not set: the admin endpoints need a token outside development "
                "(set RECO_ADMIN_TOKEN, or RECO_DEV_MODE=true to run with them open)"
            )
        if self.api_key is None and not (self.dev_mode or self.allow_anonymous):
            raise ValueError(
                "RECO_API_KEY is not set: outside development the /v1 routes need a client key (set RECO_API_KEY; "
                "or RECO_ALLOW_ANONYMOUS=true behind a gateway that authenticates clients; or RECO_DEV_MODE=true)"
            )
        return self
