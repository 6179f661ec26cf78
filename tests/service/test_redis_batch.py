"""ReadPipeline against the real Redis: concurrent commands share one write, each caller gets its own answer or
its own error, a caller's deadline does not disturb the others, and a hung, killed or restarted Redis fails the
callers waiting (within the socket timeout) and is connected to again by the next command."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.core.settings import Settings
from service.store.redis_batch import ReadPipeline, open_client, pack_command
from tests.conftest import REDIS_HOST, REDIS_PORT, REDIS_SERVER, free_port, redis_available, start_redis

if os.environ.get("RECO_TEST_REQUIRE_REDIS") == "1" and not redis_available():
    raise RuntimeError("RECO_TEST_REQUIRE_REDIS=1 but no Redis answers at 127.0.0.1:6379")
needs_redis = pytest.mark.skipif(not redis_available(), reason="no Redis at 127.0.0.1:6379 (.ci/run starts one)")
DB = 15
PREFIX = "test:redis_batch:"
URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"
Runner = Callable[[Coroutine[Any, Any, None]], None]
# The service runs on uvloop (uvicorn's `standard` extra), whose transports are its own: both loops are tested.
LOOPS = pytest.mark.parametrize("run_loop", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def client(port: int = REDIS_PORT) -> aioredis.Redis:
    return aioredis.Redis(host=REDIS_HOST, port=port, db=DB, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def reads(url: str = URL, timeout_s: float = 1.0, batch: bool = True) -> ReadPipeline:
    return ReadPipeline(url, password=None, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s, batch=batch)


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack_command("get", ("k",)) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack_command("lrange", ("é", 0, -1)) == b"*4\r\n$6\r\nLRANGE\r\n$2\r\n\xc3\xa9\r\n$1\r\n0\r\n$2\r\n-1\r\n"
    with pytest.raises(TypeError, match="NoneType"):
        pack_command("get", (None,))


@needs_redis
@LOOPS
def test_concurrent_commands_go_out_as_one_pipeline_with_each_answer_to_its_caller(run_loop: Runner) -> None:
    async def run() -> None:
        r, p = client(), reads()
        try:
            await r.mset({f"{PREFIX}{i}": f"v{i}" for i in range(40)})
            await r.rpush(f"{PREFIX}list", "a", "b")
            gets = [p.execute("get", f"{PREFIX}{i}") for i in range(50)]  # 40..49 do not exist
            results = await asyncio.gather(*gets, p.execute("lrange", f"{PREFIX}list", 0, -1))
            assert results[:40] == [f"v{i}".encode() for i in range(40)]
            assert results[40:50] == [None] * 10
            assert results[50] == [b"a", b"b"]
            assert (p.pipelines, p.commands, p.connects) == (1, 51, 1)
            # One at a time: one write each, on the same connection.
            assert await p.execute("get", f"{PREFIX}0") == b"v0"
            assert await p.execute("get", f"{PREFIX}1") == b"v1"
            assert (p.pipelines, p.connects) == (3, 1)
            # Unbatched: each command written on its own, answers still in order.
            q = reads(batch=False)
            await q.execute("get", f"{PREFIX}0")  # connected (commands that wait for the connect go out together)
            assert await asyncio.gather(*(q.execute("get", f"{PREFIX}{i}") for i in range(5))) == [
                f"v{i}".encode() for i in range(5)
            ]
            assert (q.pipelines, q.commands) == (6, 6)
            await q.close()
        finally:
            await p.close()
            await r.delete(*[f"{PREFIX}{i}" for i in range(40)], f"{PREFIX}list")
            await r.aclose()

    run_loop(run())


@needs_redis
@LOOPS
def test_pipelines_in_flight_together_each_get_their_own_answers(run_loop: Runner) -> None:
    """Several writes outstanding on the one connection at once (max_batch forces a write per 3 commands)."""

    async def run() -> None:
        r = client()
        p = ReadPipeline(URL, password=None, socket_timeout_s=1, connect_timeout_s=1, max_batch=3)
        try:
            await r.mset({f"{PREFIX}{i}": f"v{i}" for i in range(30)})
            await p.execute("get", f"{PREFIX}0")  # connected
            results = await asyncio.gather(*(p.execute("get", f"{PREFIX}{i}") for i in range(30)))
            assert results == [f"v{i}".encode() for i in range(30)]
            assert (p.pipelines, p.connects) == (11, 1)
        finally:
            await p.close()
            await r.delete(*[f"{PREFIX}{i}" for i in range(30)])
            await r.aclose()

    run_loop(run())


@needs_redis
@LOOPS
def test_an_error_of_one_command_reaches_only_its_caller(run_loop: Runner) -> None:
    async def run() -> None:
        r, p = client(), reads()
        try:
            await r.set(f"{PREFIX}string", "x")
            results = await asyncio.gather(
                p.execute("lrange", f"{PREFIX}string", 0, -1),  # WRONGTYPE
                p.execute("get", f"{PREFIX}string"),
                return_exceptions=True,
            )
            assert isinstance(results[0], ResponseError)
            assert results[1] == b"x"
            assert p.pipelines == 1
            assert await p.execute("get", f"{PREFIX}string") == b"x"  # the connection is still good
            assert p.connects == 1
        finally:
            await p.close()
            await r.delete(f"{PREFIX}string")
            await r.aclose()

    run_loop(run())


@LOOPS
def test_a_failed_connect_fails_every_caller_and_the_next_one_tries_again(run_loop: Runner) -> None:
    async def run() -> None:
        p = reads(f"redis://{REDIS_HOST}:{free_port()}/0")  # nothing listens there
        results = await asyncio.gather(*(p.execute("get", f"k{i}") for i in range(5)), return_exceptions=True)
        assert all(isinstance(e, RedisConnectionError) for e in results), results
        with pytest.raises(RedisConnectionError):
            await p.execute("get", "k")
        assert (p.pipelines, p.connects) == (0, 0)
        await p.close()
        with pytest.raises(RedisConnectionError, match="closed"):
            await p.execute("get", "k")

    run_loop(run())


@LOOPS
def test_a_server_that_accepts_but_never_answers_times_the_connect_out(run_loop: Runner) -> None:
    async def run() -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)  # then silence
        port = server.sockets[0].getsockname()[1]
        p = ReadPipeline(f"redis://127.0.0.1:{port}/0", password=None, socket_timeout_s=0.1, connect_timeout_s=0.1)
        t0 = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await p.execute("get", "k")
        assert time.monotonic() - t0 < 1.0
        await p.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    run_loop(run())


@needs_redis
@LOOPS
def test_a_caller_that_stops_waiting_does_not_disturb_the_others(run_loop: Runner) -> None:
    async def run() -> None:
        r, p = client(), reads()
        try:
            await r.set(f"{PREFIX}a", "1")
            await p.execute("get", f"{PREFIX}a")  # connected

            async def impatient() -> None:
                async with asyncio.timeout(0):
                    await p.execute("get", f"{PREFIX}a")

            results = await asyncio.gather(impatient(), p.execute("get", f"{PREFIX}a"), return_exceptions=True)
            assert isinstance(results[0], TimeoutError)
            assert results[1] == b"1"
            assert await p.execute("get", f"{PREFIX}a") == b"1"
        finally:
            await p.close()
            await r.delete(f"{PREFIX}a")
            await r.aclose()

    run_loop(run())


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@LOOPS
def test_a_hung_redis_times_out_the_callers_and_a_killed_one_is_reconnected_to(
    run_loop: Runner, tmp_path: Path
) -> None:
    port = free_port()
    server = start_redis(port, tmp_path, "--requirepass", "pw")

    async def run() -> None:
        nonlocal server
        p = ReadPipeline(f"redis://127.0.0.1:{port}/3", password="pw", socket_timeout_s=0.2, connect_timeout_s=1)
        r = aioredis.Redis(host="127.0.0.1", port=port, db=3, password="pw")
        try:
            await r.set("k", "v")
            assert await p.execute("get", "k") == b"v"  # AUTH and SELECT 3 by redis-py's handshake
            server.send_signal(signal.SIGSTOP)  # hung: the connection stays open, nothing answers
            t0 = time.monotonic()
            results = await asyncio.gather(*(p.execute("get", "k") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(e, RedisTimeoutError) for e in results), results
            assert 0.15 < time.monotonic() - t0 < 1.0
            server.send_signal(signal.SIGCONT)
            assert await p.execute("get", "k") == b"v"  # a new connection: the old one's replies are not trusted
            assert p.connects == 2
            server.kill()  # gone: the caller waiting hears of it at once
            server.wait()
            with pytest.raises(RedisError):
                await p.execute("get", "k")
            server = start_redis(port, tmp_path, "--requirepass", "pw")  # back, empty
            assert await p.execute("get", "k") is None
            assert p.connects == 3
        finally:
            await p.close()
            await r.aclose()

    try:
        run_loop(run())
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait()


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
    """The service gives the cache and the event store one read pipeline: one round trip per request."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.core.bundle import load_bundle

    user = load_bundle(settings.bundle_path).user_ids[-1]

    async def no_fresh_events() -> None:  # another test may have left some: they would add a read
        r = client()
        await r.delete(f"reco:events:{user}")
        await r.aclose()

    asyncio.run(no_fresh_events())
    with TestClient(
        create_app(settings.model_copy(update={"redis_url": f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"}))
    ) as c:
        shared = c.app.state.reco.redis_reads  # type: ignore[attr-defined]
        assert shared is not None
        assert c.post("/v1/recommendations", json={"user_id": user, "k": 3}).status_code == 200  # caches it
        before = (shared.pipelines, shared.commands)
        assert c.post("/v1/recommendations", json={"user_id": user, "k": 3}).status_code == 200
        assert (shared.pipelines - before[0], shared.commands - before[1]) == (1, 2)  # LRANGE + GET, one pipeline
        assert 'reco_cache_requests_total{result="hit"}' in c.get("/metrics").text


@needs_redis
@LOOPS
def test_the_redis_py_contract_the_pipeline_relies_on(run_loop: Runner) -> None:
    """What ReadPipeline takes from redis-py beyond its public API, checked on the release installed (pinned in
    constraints.txt): `Connection.connect()` leaves an open asyncio stream in `_reader`/`_writer`; with both set
    to None, `disconnect()` and collecting the object leave that stream alone; and the stream carries RESP."""

    async def scenario() -> None:
        pool = aioredis.ConnectionPool.from_url(URL, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        connection = pool.make_connection()
        await connection.connect()
        reader, writer = connection._reader, connection._writer
        assert isinstance(reader, asyncio.StreamReader)
        assert isinstance(writer, asyncio.StreamWriter)
        assert not writer.transport.is_closing()
        connection._reader = connection._writer = None
        await connection.disconnect()  # must not close the stream we now own
        del connection
        assert not writer.transport.is_closing()
        writer.write(pack_command("ping", ()))
        assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        writer.close()
        await pool.disconnect()

    run_loop(scenario())
