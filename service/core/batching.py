"""Dynamic micro-batching: concurrent requests coalesced into one call of a batch function in the thread pool.

Each of `workers` loops takes whatever requests are waiting (at most `max_batch`) and runs them as one batch;
while a batch computes, new requests queue, so batches grow with the load and a lone request waits for
nothing (unless `max_wait_s` asks to wait for company). `max_batch=1` is batching off: every request is its own
call, `workers` of them at a time. The batch function must return one result per request, in order; if it
raises, every request of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class MicroBatcher(Generic[Req, Res]):
    def __init__(
        self,
        fn: Callable[[Sequence[Req]], Sequence[Res]],
        executor: Executor,
        max_batch: int,
        max_wait_s: float = 0.0,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch and workers must be at least 1, max_wait_s not negative")
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.workers = workers
        self._pending: deque[tuple[Req, asyncio.Future[Res]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, request: Req) -> Res:
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._running < self.workers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self.max_wait_s and len(self._pending) < self.max_batch:
                    await asyncio.sleep(self.max_wait_s)
                batch: list[tuple[Req, asyncio.Future[Res]]] = []
                while self._pending and len(batch) < self.max_batch:
                    entry = self._pending.popleft()
                    if not entry[1].done():  # a request whose deadline passed (cancelled) is not computed
                        batch.append(entry)
                if not batch:
                    continue
                requests = [r for r, _ in batch]
                try:
                    results = await loop.run_in_executor(self.executor, self.fn, requests)
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)}")
                except Exception as e:  # every waiter of this batch hears of it; the loop goes on
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # a cancelled request (client gone) simply drops its result
                        future.set_result(result)
        finally:
            self._running -= 1
