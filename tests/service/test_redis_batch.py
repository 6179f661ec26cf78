"""CommandBatcher against the real Redis: concurrent commands share one pipeline, each caller gets its own
answer or its own error, and a caller's deadline does not disturb the others."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from service.redis_batch import CommandBatcher, open_client
from service.settings import Settings
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, redis_available

if os.environ.get("RECO_TEST_REQUIRE_REDIS") == "1" and not redis_available():
    raise RuntimeError("RECO_TEST_REQUIRE_REDIS=1 but no Redis answers at 127.0.0.1:6379")
needs_redis = pytest.mark.skipif(not redis_available(), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)")
DB = 15
PREFIX = "test:redis_batch:"


def client(port: int = REDIS_PORT) -> aioredis.Redis:
    return aioredis.Redis(host=REDIS_HOST, port=port, db=DB, socket_timeout=1, retry=Retry(NoBackoff(), 0))


@needs_redis
def test_concurrent_commands_go_out_as_one_pipeline_with_each_answer_to_its_caller() -> None:
    async def run() -> None:
        r = client()
        try:
            await r.mset({f"{PREFIX}{i}": f"v{i}" for i in range(40)})
            await r.rpush(f"{PREFIX}list", "a", "b")
            batcher = CommandBatcher(r)
            gets = [batcher.execute("get", f"{PREFIX}{i}") for i in range(50)]  # 40..49 do not exist
            results = await asyncio.gather(*gets, batcher.execute("lrange", f"{PREFIX}list", 0, -1))
            assert results[:40] == [f"v{i}".encode() for i in range(40)]
            assert results[40:50] == [None] * 10
            assert results[50] == [b"a", b"b"]
            assert (batcher.pipelines, batcher.commands) == (1, 51)
            # One at a time: one pipeline each.
            assert await batcher.execute("get", f"{PREFIX}0") == b"v0"
            assert await batcher.execute("get", f"{PREFIX}1") == b"v1"
            assert batcher.pipelines == 3
        finally:
            await r.delete(*[f"{PREFIX}{i}" for i in range(40)], f"{PREFIX}list")
            await r.aclose()

    asyncio.run(run())


@needs_redis
def test_an_error_of_one_command_reaches_only_its_caller() -> None:
    async def run() -> None:
        r = client()
        try:
            await r.set(f"{PREFIX}string", "x")
            batcher = CommandBatcher(r)
            results = await asyncio.gather(
                batcher.execute("lrange", f"{PREFIX}string", 0, -1),  # WRONGTYPE
                batcher.execute("get", f"{PREFIX}string"),
                return_exceptions=True,
            )
            assert isinstance(results[0], ResponseError)
            assert results[1] == b"x"
            assert batcher.pipelines == 1
        finally:
            await r.delete(f"{PREFIX}string")
            await r.aclose()

    asyncio.run(run())


def test_a_failed_pipeline_fails_every_caller_and_the_next_one_tries_again() -> None:
    async def run() -> None:
        r = client(free_port())  # nothing listens there
        batcher = CommandBatcher(r)
        results = await asyncio.gather(*(batcher.execute("get", f"k{i}") for i in range(5)), return_exceptions=True)
        assert all(isinstance(e, (RedisError, OSError)) for e in results), results
        with pytest.raises((RedisError, OSError)):
            await batcher.execute("get", "k")
        assert batcher.pipelines == 2
        await r.aclose()

    asyncio.run(run())


@needs_redis
def test_a_caller_that_stops_waiting_does_not_disturb_the_others() -> None:
    async def run() -> None:
        r = client()
        try:
            await r.set(f"{PREFIX}a", "1")
            batcher = CommandBatcher(r)

            async def impatient() -> None:
                async with asyncio.timeout(0):
                    await batcher.execute("get", f"{PREFIX}a")

            results = await asyncio.gather(impatient(), batcher.execute("get", f"{PREFIX}a"), return_exceptions=True)
            assert isinstance(results[0], TimeoutError)
            assert results[1] == b"1"
            await batcher.close()
        finally:
            await r.delete(f"{PREFIX}a")
            await r.aclose()

    asyncio.run(run())


@needs_redis
def test_more_concurrent_reads_than_pooled_connections_wait_for_one_instead_of_failing() -> None:
    # redis-py's default pool raised MaxConnectionsError beyond its size: under a burst the cache reported
    # errors and opened its breaker. The service's clients wait (up to the socket timeout) for a connection.
    async def run() -> None:
        r = open_client(
            f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}",
            password=None,
            socket_timeout_s=1.0,
            connect_timeout_s=1.0,
            pool_size=2,
        )
        try:
            await r.set(f"{PREFIX}pool", "v")
            results = await asyncio.gather(*(r.get(f"{PREFIX}pool") for _ in range(50)))
            assert results == [b"v"] * 50
        finally:
            await r.delete(f"{PREFIX}pool")
            await r.aclose()

    asyncio.run(run())


@needs_redis
def test_a_requests_event_read_and_cache_read_share_one_pipeline(settings: Settings) -> None:
    """The service gives the cache and the event store one read batcher: one round trip per request."""
    from fastapi.testclient import TestClient

    from service.bundle import load_bundle
    from service.main import create_app

    user = load_bundle(settings.bundle_path).user_ids[-1]

    async def no_fresh_events() -> None:  # another test may have left some: they would add a read
        r = client()
        await r.delete(f"reco:events:{user}")
        await r.aclose()

    asyncio.run(no_fresh_events())
    with TestClient(
        create_app(settings.model_copy(update={"redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"}))
    ) as c:
        reads = c.app.state.reco.redis_reads  # type: ignore[attr-defined]
        assert reads is not None
        assert c.post("/v1/recommendations", json={"user_id": user, "k": 3}).status_code == 200  # caches it
        before = (reads.pipelines, reads.commands)
        assert c.post("/v1/recommendations", json={"user_id": user, "k": 3}).status_code == 200
        assert (reads.pipelines - before[0], reads.commands - before[1]) == (1, 2)  # LRANGE + GET, one pipeline
        assert 'reco_cache_requests_total{result="hit"}' in c.get("/metrics").text
