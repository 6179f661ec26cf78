"""A user's recent events through one door, whatever backs them: the system of record (`service.store.records`)
with the recent-events cache (`service.store.events`: Redis or in process) in front of it.

Reads take the cache, else the database (and fill the cache for the next request); writes go to the database
first (acknowledged once committed) and then refresh the cache from what the database holds. A cache that fails
is bypassed and counted (`reco_event_store_errors_total`); a database that fails a read answers no events (the
request is served from the bundle's history, and counted), one that fails a write raises EventStoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.core.metrics import Metrics
from service.store.events import EventCache, EventReadFailed, EventStoreUnavailable
from service.store.records import NewEvent, Records, RecordsUnavailable


class RecentEvents:
    def __init__(self, cache: EventCache | None, records: Records | None, metrics: Metrics) -> None:
        self.cache = cache
        self.records = records
        self.metrics = metrics

    def _count(self, what: str) -> None:
        self.metrics.event_store_errors.labels(what).inc()

    async def recent(self, user_id: str) -> list[str]:
        """The user's latest events as entries (`records.entry`), oldest first: from the cache, else from the
        database (then cached). Neither answering: none."""
        entries: list[str] | None = None
        if self.cache is not None:
            try:
                entries = await self.cache.recent(user_id)
            except EventReadFailed as e:
                self._count("read_bypass" if e.bypassed else "read")
        if entries is not None or self.records is None:
            return entries or []
        records = self.records
        try:
            entries = await records.recent(user_id)
        except RecordsUnavailable:
            self._count("database_read")
            return []
        await self._fill(user_id, entries, overwrite=False)
        return entries

    async def append(self, events: Sequence[NewEvent]) -> tuple[list[bool], dict[str, list[str]]]:
        """Store `events` (in order) in the database, then put each user's latest events as the database holds
        them in the cache: (whether each event was new, each user's entries). Raises EventStoreUnavailable if the
        database did not take them (nothing was written)."""
        if self.records is None:
            raise EventStoreUnavailable("no database is configured")
        try:
            new, held = await self.records.append_events(events)
        except RecordsUnavailable as e:
            raise EventStoreUnavailable(str(e)) from e
        for user_id, entries in held.items():
            await self._fill(user_id, entries, overwrite=True)
        return new, held

    async def delete(self, user_id: str) -> int:
        """Delete the user's events and row from the database, then their cached events: the events deleted.
        Raises EventStoreUnavailable or CacheUnavailable: nothing may be assumed deleted, retry."""
        deleted = 0
        if self.records is not None:
            records = self.records
            try:
                deleted = await records.run(lambda: records.delete_user(user_id), guarded=False)
            except RecordsUnavailable as e:
                raise EventStoreUnavailable(str(e)) from e
        if self.cache is not None:
            await self.cache.delete(user_id)
        return deleted

    async def _fill(self, user_id: str, entries: list[str], *, overwrite: bool) -> None:
        if self.cache is not None and not await self.cache.fill(user_id, entries, overwrite=overwrite):
            self._count("cache_write")
