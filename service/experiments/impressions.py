"""Every list served, recorded in the system of record off the response path.

`record` never waits: it appends to a bounded in-process queue, which one background task writes to the database
in batches (one transaction each, in the database threads). Past `max_pending` waiting a list is dropped and
counted, and so is a batch the database does not take (`reco_impressions_total{result}`): a recommendation never
waits for, nor fails because of, its impression. A request id seen before (a client's repeated X-Request-ID) is
stored once, the first list kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque

from service.core.metrics import Metrics
from service.store.experiments import Impression, store_impressions
from service.store.records import Records, RecordsUnavailable

log = logging.getLogger(__name__)


class ImpressionLog:
    def __init__(
        self, records: Records, metrics: Metrics, *, max_pending: int = 10_000, batch: int = 2000, every_s: float = 1.0
    ) -> None:
        self.records = records
        self.metrics = metrics
        self.max_pending = max_pending
        self.batch = batch
        self.every_s = every_s
        self._pending: deque[Impression] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reco-impressions")

    def record(self, impression: Impression) -> None:
        if len(self._pending) >= self.max_pending:
            self.metrics.impressions.labels("dropped").inc()
            return
        self._pending.append(impression)
        if len(self._pending) >= self.batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write everything waiting now (in batches)."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))]
            try:
                stored, duplicates = await self.records.run(
                    functools.partial(store_impressions, self.records.engine, batch)
                )
            except RecordsUnavailable as e:
                self.metrics.impressions.labels("failed").inc(len(batch))
                log.warning("%d impressions not stored: %s", len(batch), e)
                continue
            self.metrics.impressions.labels("stored").inc(stored)
            if duplicates:
                self.metrics.impressions.labels("duplicate").inc(duplicates)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # never end the loop: the next round writes what comes
                log.exception("writing impressions failed")

    async def close(self) -> None:
        """Stop the writer and write what is waiting (bounded by the database's timeouts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
