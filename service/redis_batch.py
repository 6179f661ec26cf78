"""Redis commands of concurrent requests, sent as one pipeline.

Each recommendation reads Redis twice (the user's recent events and the cached embedding, at once). Under load
many requests reach the same step in the same event-loop turn; `CommandBatcher` collects the commands issued in
that turn and sends them as one pipeline: one connection taken from the pool, one write, one read, instead of one
round trip each (the effect of MGET for GETs, for any read command). The service gives the embedding cache and
the event store one batcher for their reads, so a request's two reads share a round trip too. A command issued
alone is sent alone, one turn later.

A caller's own deadline (`asyncio.timeout`) still applies: it stops waiting; the pipeline it was part of carries
on for the others. An error of the pipeline as a whole (connection refused, timeout) is raised to every caller in
it; an error of one command (a wrong type) only to its caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


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


class CommandBatcher:
    """`execute(command, *args)`: the command's reply. `batch=False`: each command is sent at once, alone."""

    def __init__(self, client: aioredis.Redis, max_batch: int = 256, batch: bool = True) -> None:
        self._client = client
        self._batch = batch
        self._max_batch = max_batch
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # sends: pipelines, and lone commands sent alone (for tests)
        self.commands = 0

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    async def execute(self, command: str, *args: Any) -> Any:
        if not self._batch:
            return await getattr(self._client, command)(*args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, args, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # after the other tasks ready in this turn have queued theirs
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        batch = [entry for entry in batch if not entry[2].done()]  # callers gone already
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)  # a reference until it finishes
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        try:
            if len(batch) == 1:  # alone: a pipeline object would cost more than the command (its error: below)
                command, args, _ = batch[0]
                results = [await getattr(self._client, command)(*args)]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for command, args, _ in batch:
                        getattr(pipe, command)(*args)
                    results = await pipe.execute(raise_on_error=False)
        except BaseException as e:  # cancelled at shutdown, or the whole pipeline failed
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e if isinstance(e, Exception) else ConnectionError("pipeline cancelled"))
            if not isinstance(e, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait for pipelines in flight (their callers may still be waiting)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
