from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.core.threads import LifoThreadPool
from service.store.cache import CacheResult, LocalEmbeddingCache
from service.store.redis_batch import ClientReads, ReadPipeline
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, redis_available

# CI (RECO_TEST_REQUIRE_REDIS=1) must exercise the real server; elsewhere (e.g. the GPU machine) these skip.
if os.environ.get("RECO_TEST_REQUIRE_REDIS") == "1" and not redis_available():
    raise RuntimeError("RECO_TEST_REQUIRE_REDIS=1 but no Redis answers at 127.0.0.1:6379")
needs_redis = pytest.mark.skipif(not redis_available(), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)")


def metric(client: TestClient, name: str, labels: dict[str, str]) -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def test_local_cache_lru_and_ttl() -> None:
    async def run() -> None:
        cache = LocalEmbeddingCache(max_entries=2, ttl_s=60, dim=2)
        v = np.array([1.0, 2.0], dtype=np.float32)
        assert (await cache.get("a"))[1] is CacheResult.MISS
        await cache.set("a", v)
        await cache.set("b", v * 2)
        value, result = await cache.get("a")  # a is now most recent
        assert result is CacheResult.HIT
        assert value is not None
        assert value.tolist() == [1.0, 2.0]
        await cache.set("c", v * 3)  # evicts b
        assert (await cache.get("b"))[1] is CacheResult.MISS
        assert len(cache) == 2
        expired = LocalEmbeddingCache(max_entries=2, ttl_s=0.01, dim=2)
        await expired.set("a", v)
        await asyncio.sleep(0.02)
        assert (await expired.get("a"))[1] is CacheResult.MISS

    asyncio.run(run())


# The service's own mechanisms, and the library's way each was measured against (benchmarks.mechanisms): the
# same answers either way.
MECHANISMS = {
    "pipelined-lifo": {"redis_reads": "pipelined", "compute_pool": "lifo"},
    "client-executor": {"redis_reads": "client", "compute_pool": "executor"},
}


@pytest.fixture(params=list(MECHANISMS))
def redis_client(tiny_bundle: Path, settings: Settings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    update = {"redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/0", **MECHANISMS[request.param]}
    app = create_app(settings.model_copy(update=update))
    with TestClient(app) as c:
        state = c.app.state.reco  # type: ignore[attr-defined]
        client = request.param.startswith("client")
        assert isinstance(state.redis_reads, ClientReads if client else ReadPipeline)
        assert isinstance(state.executor, ThreadPoolExecutor if client else LifoThreadPool)
        yield c
    raw = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    keys = list(raw.scan_iter(f"reco:{load_bundle(tiny_bundle).version}:*"))
    if keys:
        raw.delete(*keys)


@needs_redis
def test_redis_second_call_is_a_hit(redis_client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[4]
    raw = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    key = f"reco:{bundle.version}:user_emb:{user_id}"
    raw.delete(key, f"reco:events:{user_id}")  # no fresh events left by anything else

    first = redis_client.post("/v1/recommendations", json={"user_id": user_id, "k": 5}).json()
    assert metric(redis_client, "reco_cache_requests_total", {"result": "miss"}) == 1
    deadline = time.monotonic() + 10  # written after the answer (off the response path)
    while (stored := raw.get(key)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored is not None
    assert len(stored) == 4 * bundle.manifest.dims.embedding_dim
    assert 0 < raw.ttl(key) <= 3600
    pipeline = redis_client.app.state.reco.pipeline  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.frombuffer(stored, np.float32), pipeline.encode(np.array([4]))[0], atol=1e-6)

    second = redis_client.post("/v1/recommendations", json={"user_id": user_id, "k": 5}).json()
    assert metric(redis_client, "reco_cache_requests_total", {"result": "hit"}) == 1
    assert [i["item_id"] for i in first["items"]] == [i["item_id"] for i in second["items"]]
    ready = redis_client.get("/readyz").json()
    assert (ready["cache_backend"], ready["cache_status"]) == ("redis", "ok")


@needs_redis
def test_redis_garbage_value_is_recomputed(redis_client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    key = f"reco:{bundle.version}:user_emb:{bundle.user_ids[6]}"
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT).set(key, b"short")
    response = redis_client.post("/v1/recommendations", json={"user_id": bundle.user_ids[6], "k": 5})
    assert response.status_code == 200
    assert metric(redis_client, "reco_cache_requests_total", {"result": "error"}) == 1
    assert len(redis.Redis(host=REDIS_HOST, port=REDIS_PORT).get(key) or b"") == 4 * bundle.manifest.dims.embedding_dim


def test_redis_down_requests_still_succeed(settings: Settings, tiny_bundle: Path) -> None:
    """Nothing listens on the port: every request is served, errors are counted, then the breaker skips Redis."""
    app = create_app(
        settings.model_copy(
            update={
                "redis_url": f"redis://127.0.0.1:{free_port()}/0",
                "breaker_failures": 3,
                "breaker_reset_s": 60,
            }
        )
    )
    bundle = load_bundle(tiny_bundle)
    with TestClient(app) as c:
        for u in range(10):
            r = c.post("/v1/recommendations", json={"user_id": bundle.user_ids[u], "k": 5})
            assert r.status_code == 200
            assert len(r.json()["items"]) == 5
        # A request reads its cached embedding and its events at once, and on a miss fills the events from the
        # database, all through the one breaker: it opened at the 3rd error, and from there on nothing asked Redis.
        errors = metric(c, "reco_cache_requests_total", {"result": "error"})
        errors += metric(c, "reco_event_store_errors_total", {"op": "read"})
        assert 2 <= errors <= 4  # the first request's two reads (and its events' cache fill, the 3rd error)
        assert metric(c, "reco_cache_requests_total", {"result": "bypass"}) >= 8
        assert metric(c, "reco_event_store_errors_total", {"op": "read_bypass"}) >= 8
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["cache_status"] == "breaker_open"
        assert "reco_cache_breaker_open 1.0" in c.get("/metrics").text


def test_redis_hung_requests_still_succeed(settings: Settings, tiny_bundle: Path) -> None:
    """A server that accepts connections and never answers (like a SIGSTOPped Redis): requests succeed."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes handshakes; nobody ever reads or writes
    port = listener.getsockname()[1]
    try:
        app = create_app(
            settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0", "breaker_failures": 2})
        )
        bundle = load_bundle(tiny_bundle)
        with TestClient(app) as c:
            for u in range(4):
                r = c.post("/v1/recommendations", json={"user_id": bundle.user_ids[u], "k": 5})
                assert r.status_code == 200
            errors = metric(c, "reco_cache_requests_total", {"result": "error"})
            errors += metric(c, "reco_event_store_errors_total", {"op": "read"})
            assert errors == 2  # the first request's two reads, at once
            assert metric(c, "reco_cache_requests_total", {"result": "bypass"}) >= 3
            assert metric(c, "reco_event_store_errors_total", {"op": "read_bypass"}) == 3
    finally:
        listener.close()
