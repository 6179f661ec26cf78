"""Embedding refresh after events, off the response path.

An event write is acknowledged once the database has committed it and the recent-events cache holds it; the
user's embedding for the new events is then recomputed here, in the background, so the next recommendation
usually finds it cached. Nothing depends on it: an embedding is cached under a key naming the events it was
computed from, so a refresh that has not run yet (or never runs) costs the next request one encoding, in its
batch, never a stale answer.

Users waiting are coalesced (a user's newer events replace the older ones waiting) and encoded together, one
batch at a time, at most `max_batch` users per call. At most `max_pending` users wait: past that a refresh is
dropped (and counted), so a burst of events never queues encoder work without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Job = TypeVar("Job")


class Refresher(Generic[Job]):
    """Runs `refresh(jobs)` for the users submitted, one call at a time, in a task of its own.
    Used from the event loop only."""

    def __init__(
        self,
        refresh: Callable[[list[tuple[str, Job]]], Awaitable[None]],
        *,
        max_batch: int,
        max_pending: int,
        on_drop: Callable[[int], None],
        on_failure: Callable[[int], None],
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be at least 1")
        self._refresh = refresh
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._on_drop = on_drop
        self._on_failure = on_failure
        self._pending: dict[str, Job] = {}
        self._running: set[str] = set()  # the users of the call in progress
        self._task: asyncio.Task[None] | None = None
        self._batch_done = asyncio.Event()
        self._closed = False

    @property
    def busy(self) -> bool:
        """A refresh is waiting or running."""
        return self._task is not None and not self._task.done()

    def submit(self, jobs: list[tuple[str, Job]]) -> None:
        """Queue a refresh for each (user, job): a user already waiting gets the newer job; a new user past
        `max_pending` waiting is dropped."""
        if self._closed:  # a request that began on a bundle since replaced: the next request encodes
            return
        dropped = 0
        for user_id, job in jobs:
            if user_id in self._pending or len(self._pending) < self._max_pending:
                self._pending[user_id] = job
            else:
                dropped += 1
        if dropped:
            self._on_drop(dropped)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="reco-embedding-refresh")

    async def _run(self) -> None:
        while self._pending:
            batch = []
            for user_id in list(self._pending)[: self._max_batch]:
                batch.append((user_id, self._pending.pop(user_id)))
            self._running = {user_id for user_id, _ in batch}
            self._batch_done.clear()
            try:
                await self._refresh(batch)
            except Exception:  # the next request encodes these users itself; the loop goes on
                log.exception("refreshing %d users' embeddings failed", len(batch))
                self._on_failure(len(batch))
            finally:
                self._running = set()
                self._batch_done.set()

    async def forget(self, user_id: str) -> None:
        """Drop the user's waiting refresh, and wait for one in progress to finish (what it stored is then there
        to delete)."""
        self._pending.pop(user_id, None)
        while user_id in self._running:
            await self._batch_done.wait()

    async def idle(self) -> None:
        """Wait until nothing is waiting or running."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop: what is waiting is dropped, a call in progress is cancelled, nothing more is taken."""
        self._closed = True
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
