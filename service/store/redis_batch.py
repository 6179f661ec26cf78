"""Redis reads of concurrent requests, pipelined on one connection.

Each recommendation reads Redis twice (the user's recent events and the cached embedding, at once). Under load
many requests reach the same step in the same event-loop turn; `ReadPipeline` collects the commands issued in
that turn and writes them as one pipeline (one write, one round trip, the effect of MGET for GETs, for any read
command). The service gives the embedding cache and the recent-events cache one `ReadPipeline`, so a request's two reads
share a round trip too.

It keeps one connection and lets several pipelines be in flight on it at once: Redis answers a connection's
commands in order, so each reply goes to the next caller waiting. The connection is opened by redis-py (URL
options, TLS, AUTH, SELECT as everywhere else in the service); its replies are then read by a protocol of our
own, parsed by hiredis as they arrive and handed to their callers in the same event-loop turn. redis-py's
request/response path (a pooled connection taken and given back, a pipeline object, a task reading each reply)
cost ~0.3 ms of a lone request's ~3 ms (measured on the 2-core machine at concurrency 1); this costs a round
trip and a few microseconds.

Errors: a failed connect or a lost connection fails every command waiting on it (`redis.exceptions
.ConnectionError`); a reply later than the socket timeout closes the connection and fails every command waiting
on it (`redis.exceptions.TimeoutError`), since Redis is then hung or the network is gone; the next command
connects again. An error reply (a wrong type) fails only its own command (`ResponseError`). A caller's own
deadline (`asyncio.timeout`) just stops it waiting; its reply is dropped when it comes.

Against redis-py's asyncio client, a pooled connection and a round trip per read (RECO_REDIS_READS=client,
`ClientReads`), `python -m benchmarks.mechanisms`, 100K items, one process, the 2-core VM, 2026-12-07, medians of 2
interleaved rounds: c=16 508 vs 470 req/s, p99 66 vs 80 ms; c=64 705 vs 587 req/s, p99 123 vs 146 ms
(docs/performance.md): kept, +8 % and +20 % throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def open_client(
    url: str, *, password: str | None, socket_timeout_s: float, connect_timeout_s: float, pool_size: int
) -> aioredis.Redis:
    """A client whose pool makes a caller wait (up to the socket timeout) for a free connection when all
    `pool_size` are busy: redis-py's default pool raises at once instead, which under a burst of requests turned
    into cache errors and opened the breaker. No retries: redis-py retries 3x with backoff by default, and a
    cache must not wait."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        password=password,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=pool_size,
        timeout=socket_timeout_s,
        health_check_interval=0,
    )
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


def pack_command(command: str, args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8, int and float as their decimal text)."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command.upper().encode())]
    for arg in args:
        if isinstance(arg, bytes):
            value = arg
        elif isinstance(arg, str):
            value = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            value = repr(arg).encode()
        else:
            raise TypeError(f"a Redis argument must be str, bytes, int or float, not {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


_INCOMPLETE = object()  # hiredis: no whole reply buffered yet (its default, False, is also a RESP3 reply)


class _Replies(asyncio.Protocol):
    """The reading side of one connection: replies parsed as they arrive, each to the oldest caller waiting."""

    def __init__(self, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.writer = writer  # held: some Pythons close a stream's transport when its writer is collected
        self.transport = writer.transport
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError, notEnoughData=_INCOMPLETE)
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (caller, reply deadline), sent order
        self.failure: RedisError | None = None  # set once the connection is unusable
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self.failure is None and not self.transport.is_closing()

    def send(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s  # the loop's clock, as call_at's
        self.waiting.extend((f, deadline) for f in futures)
        self.transport.write(data)
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self.waiting[0][1]
        if loop.time() >= deadline:
            self.fail(RedisTimeoutError(f"no reply from Redis within {self.timeout_s:g} s"))
        else:
            self._watchdog = loop.call_at(deadline, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except InvalidResponse as e:
                self.fail(e)
                return
            if reply is _INCOMPLETE:
                return
            if not self.waiting:  # nothing asked for it: the stream can no longer be trusted
                self.fail(InvalidResponse("Redis sent a reply nobody was waiting for"))
                return
            future, _ = self.waiting.popleft()
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc!r}" if exc else "Redis closed the connection"))

    def fail(self, error: RedisError) -> None:
        """Fail every caller waiting and close the connection (replies after this one could not be matched)."""
        if self.failure is None:
            self.failure = error
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.transport.abort()


class Reads(Protocol):
    """What the caches read Redis through: a command's reply, and closing."""

    async def execute(self, command: str, *args: Any) -> Any: ...

    async def close(self) -> None: ...


class ClientReads:
    """The library's way (RECO_REDIS_READS=client): each read one command on a pooled connection of redis-py's
    asyncio client, a round trip each."""

    def __init__(
        self, url: str, *, password: str | None, socket_timeout_s: float, connect_timeout_s: float, pool_size: int
    ) -> None:
        self._client = open_client(
            url,
            password=password,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            pool_size=pool_size,
        )

    async def execute(self, command: str, *args: Any) -> Any:
        return await self._client.execute_command(command.upper(), *args)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._client.aclose()


class ReadPipeline:
    """`execute(command, *args)`: the command's reply (bytes, None, a list, an int ...). `batch=False`: each
    command is written at once, alone (still on the one connection, one round trip each)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        socket_timeout_s: float,
        connect_timeout_s: float,
        batch: bool = True,
        max_batch: int = 256,
    ) -> None:
        self._pool = aioredis.ConnectionPool.from_url(
            url,
            password=password,
            socket_timeout=socket_timeout_s,  # of the handshake (AUTH, SELECT)
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._timeout_s = socket_timeout_s
        self._connect_deadline_s = connect_timeout_s + socket_timeout_s
        self._batch = batch
        self._max_batch = max_batch
        self._replies: _Replies | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._queued: list[tuple[bytes, asyncio.Future[Any]]] = []  # written once the connect finishes
        self._flush_scheduled = False
        self._closed = False
        self.pipelines = 0  # writes (for tests and benchmarks)
        self.commands = 0
        self.connects = 0

    async def execute(self, command: str, *args: Any) -> Any:
        if self._closed:
            raise RedisConnectionError("the read pipeline is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((pack_command(command, args), future))
        if not self._batch or len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # after the other tasks ready in this turn have queued theirs
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = [entry for entry in self._pending if not entry[1].done()]  # callers gone already are not sent
        self._pending = []
        if not batch:
            return
        replies = self._replies
        if replies is not None and replies.usable:
            self._write(replies, batch)
            return
        self._queued += batch
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _write(self, replies: _Replies, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        replies.send(b"".join(data for data, _ in batch), [future for _, future in batch])

    async def _connect(self) -> None:
        connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._connect_deadline_s):
                await connection.connect()  # redis-py: socket, TLS, AUTH, SELECT
            # The stream redis-py opened is ours from here: its object forgets it (else collecting the object would
            # close it), and our protocol reads it instead of redis-py's stream reader.
            writer = connection._writer
            connection._reader = connection._writer = None
            if writer is None:
                raise RedisConnectionError("redis-py connected without a stream")
            replies = _Replies(writer, self._timeout_s)
            writer.transport.set_protocol(replies)
        except BaseException as e:  # every caller queued for this connect hears of it; the next read tries again
            if isinstance(e, RedisError):
                error: RedisError = e
            elif isinstance(e, TimeoutError):
                error = RedisTimeoutError(f"connecting to Redis took over {self._connect_deadline_s:g} s")
            else:
                error = RedisConnectionError(f"connecting to Redis: {e!r}")
            with contextlib.suppress(Exception):
                await connection.disconnect()
            queued, self._queued = self._queued, []
            for _, future in queued:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(e, Exception):  # cancelled (shutdown)
                raise
            return
        finally:
            self._connecting = None
        self.connects += 1
        self._replies = replies
        queued, self._queued = self._queued, []
        queued = [entry for entry in queued if not entry[1].done()]
        if queued:
            self._write(replies, queued)

    async def close(self) -> None:
        """Let the replies in flight arrive (each bounded by the socket timeout), then close the connection."""
        self._closed = True
        if self._pending:
            self._flush()
        if self._connecting is not None:
            with contextlib.suppress(Exception):
                await self._connecting
        replies = self._replies
        if replies is not None:
            waiting = [future for future, _ in replies.waiting]
            if waiting:
                await asyncio.wait(waiting)
            replies.transport.close()
        await self._pool.disconnect()
