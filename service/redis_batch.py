"""Redis commands of concurrent requests, sent as one pipeline.

Each recommendation reads Redis twice (the user's recent events, then the cached embedding). Under load many
requests reach the same step in the same event-loop turn; `CommandBatcher` collects the commands issued in that
turn and sends them as one pipeline: one connection taken from the pool, one write, one read, instead of one
round trip each (the effect of MGET for GETs, for any read command). A command issued alone is sent alone, one
turn later.

A caller's own deadline (`asyncio.timeout`) still applies: it stops waiting; the pipeline it was part of carries
on for the others. An error of the pipeline as a whole (connection refused, timeout) is raised to every caller in
it; an error of one command (a wrong type) only to its caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis


class CommandBatcher:
    def __init__(self, client: aioredis.Redis, max_batch: int = 256) -> None:
        self._client = client
        self._max_batch = max_batch
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # pipelines sent (for tests and the benchmark)
        self.commands = 0

    async def execute(self, command: str, *args: Any) -> Any:
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
