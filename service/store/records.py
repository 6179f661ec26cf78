"""The system of record: a SQL database (SQLAlchemy 2 Core; schema by Alembic, `service/store/migrations`) holding every
event the service acknowledged, the users it has heard of, and the deletions it carried out.

`RECO_DATABASE_URL`: a SQLite file by default (embedded, one machine), PostgreSQL in production (shared by every
replica: `postgresql+psycopg://user@host/db`). Redis and the in-process stores are caches of it: an event is
acknowledged only once it is committed here; a user's recent events are read from here when the cache does not
hold them. Events are append-only; an `event_id` given by the client makes a retried write a no-op.

Every method is blocking and runs in the service's database thread pool (`Records.run`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.core.batching import MicroBatcher
from service.store.breaker import CircuitBreaker
from service.store.schema import deletions, events, impressions, live_items, open_engine, users

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL: a batch of events appended in one statement, so one round trip (autocommit: a statement is its own
# transaction). The events go in as arrays (one statement for every batch size), in order (ids follow `ord`); an
# event_id stored before is skipped by the unique index; the users are created or touched; what comes back is
# the event_ids inserted (kind 0) and each user's latest events (kind 1), those just inserted included (the
# statement's snapshot does not show its own inserts, hence the UNION): the latest `cap` of what was there (the
# end of one range of ix_events_user_id_id, however long the history) with the new ones, the latest `cap` kept.
APPEND_POSTGRES = sa.text(
    """
WITH batch AS (
    SELECT * FROM unnest(
        CAST(:event_ids AS varchar[]), CAST(:user_ids AS varchar[]), CAST(:item_ids AS varchar[]),
        CAST(:event_types AS varchar[]), CAST(:timestamps AS float8[]), CAST(:request_ids AS varchar[])
    ) WITH ORDINALITY AS b(event_id, user_id, item_id, event_type, ts, request_id, ord)
),
inserted AS (
    INSERT INTO events (event_id, user_id, item_id, event_type, "timestamp", received_at, request_id)
    SELECT event_id, user_id, item_id, event_type, ts, :now, request_id FROM batch ORDER BY ord
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id, event_id, user_id, item_id, event_type
),
touched AS (
    INSERT INTO users (user_id, first_seen, last_seen)
    SELECT DISTINCT user_id, CAST(:now AS float8), CAST(:now AS float8) FROM batch
    ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen
),
held AS (
    SELECT e.id, u.user_id, e.item_id, e.event_type
    FROM (SELECT DISTINCT user_id FROM batch) AS u
    CROSS JOIN LATERAL (
        SELECT id, item_id, event_type FROM events WHERE events.user_id = u.user_id ORDER BY id DESC LIMIT :cap
    ) AS e
    UNION ALL
    SELECT id, user_id, item_id, event_type FROM inserted
),
ranked AS (
    SELECT id, user_id, item_id, event_type, row_number() OVER (PARTITION BY user_id ORDER BY id DESC) AS n
    FROM held
)
SELECT 0 AS kind, event_id AS user_id, NULL AS event_type, NULL AS item_id, 0 AS id
FROM inserted WHERE event_id IS NOT NULL
UNION ALL
SELECT 1, user_id, event_type, item_id, id FROM ranked WHERE n <= :cap
ORDER BY kind, user_id, id
"""
)


class RecordsUnavailable(Exception):
    """The database did not answer or refused; nothing may be assumed written."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float | None
    event_id: str | None = None
    request_id: str | None = None  # the list (impression) it answers, for attribution


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str | None
    item_id: str
    event_type: str
    timestamp: float | None
    received_at: float


def entry(event_type: str, item_id: str) -> str:
    """An event as the recent-events caches hold it (service.store.events): the item id, '!'-prefixed for a dislike."""
    return ("!" if event_type == "dislike" else "") + item_id


class Records:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        threads: int,
        recent: int,
        breaker: CircuitBreaker | None = None,
        read_timeout_s: float | None = None,
    ) -> None:
        self.engine = open_engine(url, timeout_s)
        self.backend = self.engine.dialect.name
        self._timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s or timeout_s  # `run(..., timeout_s=records.read_timeout_s)`
        self._recent = recent
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="reco-db")
        # A hung database costs one timeout per reset period, not one per request (as for Redis).
        self.breaker = breaker or CircuitBreaker(3, 5.0)
        # The write path's statements (SQLite's; PostgreSQL's is APPEND_POSTGRES), built once: building a
        # statement costs more than running it.
        self._insert_events = (
            self._insert(events).on_conflict_do_nothing(index_elements=["event_id"]).returning(events.c.event_id)
        )
        upsert = self._insert(users)
        self._upsert_users = upsert.on_conflict_do_update(
            index_elements=["user_id"], set_={"last_seen": upsert.excluded.last_seen}
        )
        latest = sa.func.row_number().over(partition_by=events.c.user_id, order_by=events.c.id.desc()).label("n")
        ranked = (
            sa.select(events.c.user_id, events.c.event_type, events.c.item_id, events.c.id, latest)
            .where(events.c.user_id.in_(sa.bindparam("user_ids", expanding=True)))
            .subquery()
        )
        self._recent_of_users = (
            sa.select(ranked.c.user_id, ranked.c.event_type, ranked.c.item_id)
            .where(ranked.c.n <= recent)
            .order_by(ranked.c.user_id, ranked.c.id)
        )
        # Concurrent requests' event writes, coalesced: the batches waiting while one commits go to the database
        # as one transaction (one commit, one read-back), at most two transactions in flight.
        self._writes: MicroBatcher[Sequence[NewEvent], tuple[list[bool], dict[str, list[str]]]] = MicroBatcher(
            self._append_many, self._pool, max_batch=64, workers=2
        )
        # Concurrent requests' reads of recent events (every request, while the recent-events cache is down or
        # skipped), coalesced likewise: one query for the users read while another query runs.
        self._reads: MicroBatcher[str, list[str]] = MicroBatcher(self._recent_many, self._pool, max_batch=64, workers=2)

    async def append_events(self, batch: Sequence[NewEvent]) -> tuple[list[bool], dict[str, list[str]]]:
        """`append`, coalesced with other requests' writes; RecordsUnavailable if the database did not take them
        (then none of the coalesced writes was stored)."""
        return await self._call(lambda: self._writes.submit(batch), True, self._timeout_s * 2)

    def _append_many(self, batches: Sequence[Sequence[NewEvent]]) -> list[tuple[list[bool], dict[str, list[str]]]]:
        """Several requests' batches in one transaction; each gets its own events' flags and users' events."""
        new, held = self.append([e for batch in batches for e in batch])
        out, start = [], 0
        for batch in batches:
            mine = new[start : start + len(batch)]
            start += len(batch)
            out.append((mine, {e.user_id: held[e.user_id] for e in batch}))
        return out

    async def recent(self, user_id: str) -> list[str]:
        """`recent_entries`, coalesced with other requests' reads (`read_timeout_s`); RecordsUnavailable if the
        database did not answer."""
        return await self._call(lambda: self._reads.submit(user_id), True, self.read_timeout_s)

    def _recent_many(self, user_ids: Sequence[str]) -> list[list[str]]:
        if len(user_ids) == 1:
            return [self.recent_entries(user_ids[0])]
        with self.engine.connect() as connection:
            held = self._recent_of(connection, list(dict.fromkeys(user_ids)))
        return [list(held[u]) for u in user_ids]

    async def run(self, fn: Callable[[], T], *, guarded: bool = True, timeout_s: float | None = None) -> T:
        """`fn` in the database threads, within the timeout (default: twice the statement timeout); any database
        error is RecordsUnavailable, and so is a call the breaker skips (`guarded=False`: always tried, for a
        deletion)."""
        loop = asyncio.get_running_loop()
        return await self._call(lambda: loop.run_in_executor(self._pool, fn), guarded, timeout_s or self._timeout_s * 2)

    async def _call(self, start: Callable[[], Awaitable[T]], guarded: bool, timeout_s: float) -> T:
        """Await `start()` within `timeout_s`, behind the breaker unless not `guarded`."""
        permit = self.breaker.admit() if guarded else None
        if guarded and permit is None:
            raise RecordsUnavailable(f"the database ({self.backend}) is skipped after repeated errors; retry shortly")
        try:
            async with asyncio.timeout(timeout_s):
                out = await start()
        except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as e:
            self.breaker.failure()
            raise RecordsUnavailable(f"the database ({self.backend}) did not answer: {type(e).__name__}") from e
        finally:
            if permit is not None:
                self.breaker.release(permit)
        self.breaker.success()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()

    # ------------------------------------------------------------------ blocking operations (database threads)

    def append(self, batch: Sequence[NewEvent]) -> tuple[list[bool], dict[str, list[str]]]:
        """Append `batch` in one transaction: per event, whether it is new (False: its event_id was stored before,
        or earlier in this batch), and each of its users' latest events as the transaction leaves them (cache
        entries, oldest first). Users are created or touched."""
        now = time.time()
        rows, ids = [], set()
        for e in batch:
            if e.event_id is not None:
                if e.event_id in ids:
                    continue
                ids.add(e.event_id)
            rows.append(
                {
                    "event_id": e.event_id,
                    "user_id": e.user_id,
                    "item_id": e.item_id,
                    "event_type": e.event_type,
                    "timestamp": e.timestamp,
                    "received_at": now,
                    "request_id": e.request_id,
                }
            )
        touched = sorted({e.user_id for e in batch})
        if self.backend == "postgresql":
            inserted, held = self._append_postgres(rows, touched, now)
        else:
            with self.engine.begin() as connection:
                # An event_id stored before (a retry, here or on another replica) is skipped by the database
                # itself, atomically: what comes back is what was inserted. Parameters as a list (executemany),
                # not a multi-row VALUES: one compiled statement for every batch size.
                inserted = {r[0] for r in connection.execute(self._insert_events, rows)}
                users_rows = [{"user_id": u, "first_seen": now, "last_seen": now} for u in touched]
                connection.execute(self._upsert_users, users_rows)
                held = self._recent_of(connection, touched)
        new, counted = [], set()
        for e in batch:
            fresh = e.event_id is None or (e.event_id in inserted and e.event_id not in counted)
            if e.event_id is not None:
                counted.add(e.event_id)
            new.append(fresh)
        return new, held

    def _append_postgres(
        self, rows: list[dict[str, Any]], user_ids: list[str], now: float
    ) -> tuple[set[str], dict[str, list[str]]]:
        """`append`'s writes and read-back on PostgreSQL, as one statement (APPEND_POSTGRES): one round trip."""
        params = {
            "event_ids": [r["event_id"] for r in rows],
            "user_ids": [r["user_id"] for r in rows],
            "item_ids": [r["item_id"] for r in rows],
            "event_types": [r["event_type"] for r in rows],
            "timestamps": [r["timestamp"] for r in rows],
            "request_ids": [r["request_id"] for r in rows],
            "now": now,
            "cap": self._recent,
        }
        inserted: set[str] = set()
        held: dict[str, list[str]] = {u: [] for u in user_ids}
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for kind, key, event_type, item_id, _ in connection.execute(APPEND_POSTGRES, params):
                if kind == 0:
                    inserted.add(key)
                else:
                    held[key].append(entry(event_type, item_id))
        return inserted, held

    def _recent_of(self, connection: sa.Connection, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """The latest events (at most the cap) of each of `user_ids`, oldest first, in one query."""
        held: dict[str, list[str]] = {u: [] for u in user_ids}
        for user_id, event_type, item_id in connection.execute(self._recent_of_users, {"user_ids": list(user_ids)}):
            held[user_id].append(entry(event_type, item_id))
        return held

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.backend == "postgresql" else sqlite
        return dialect.insert(table)

    def recent_entries(self, user_id: str) -> list[str]:
        """The user's latest events (at most the recent-events cap), oldest first, as cache entries."""
        query = (
            sa.select(events.c.event_type, events.c.item_id)
            .where(events.c.user_id == user_id)
            .order_by(events.c.id.desc())
            .limit(self._recent)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [entry(t, i) for t, i in reversed(rows)]

    def user(self, user_id: str) -> tuple[dict[str, float] | None, list[StoredEvent]]:
        """What is held about the user: their row (first and last seen) and every event, oldest first."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(users).where(users.c.user_id == user_id)).mappings().first()
            stored = connection.execute(
                sa.select(
                    events.c.event_id, events.c.item_id, events.c.event_type, events.c.timestamp, events.c.received_at
                )
                .where(events.c.user_id == user_id)
                .order_by(events.c.id)
            ).all()
        profile = {"first_seen": row["first_seen"], "last_seen": row["last_seen"]} if row else None
        return profile, [StoredEvent(*r) for r in stored]

    def delete_user(self, user_id: str) -> int:
        """Delete the user's events, the lists shown to them and their row, and record the deletion (when and how
        many events, no content)."""
        with self.engine.begin() as connection:
            deleted = connection.execute(sa.delete(events).where(events.c.user_id == user_id)).rowcount
            connection.execute(sa.delete(impressions).where(impressions.c.user_id == user_id))
            connection.execute(sa.delete(users).where(users.c.user_id == user_id))
            connection.execute(
                sa.insert(deletions).values(user_id=user_id, deleted_at=time.time(), events_deleted=deleted)
            )
        return int(deleted)

    def deletions_after(self, after_id: int) -> list[tuple[int, str, float]]:
        """The deletions recorded after row `after_id`, in order: (id, user id, deleted at)."""
        query = (
            sa.select(deletions.c.id, deletions.c.user_id, deletions.c.deleted_at)
            .where(deletions.c.id > after_id)
            .order_by(deletions.c.id)
        )
        with self.engine.connect() as connection:
            return [(int(i), str(u), float(t)) for i, u, t in connection.execute(query)]

    def add_live_item(self, item_id: str, record: str) -> str | None:
        """Store an item added live (its JSON record) unless its id is taken: None if stored, else the record the
        database already holds for that id (the same content: an idempotent retry; other content: a conflict).
        The unique id decides between replicas taking the same id at once."""
        row = {"item_id": item_id, "record": record, "created_at": time.time()}
        with self.engine.begin() as connection:
            insert = self._insert(live_items).on_conflict_do_nothing(index_elements=["item_id"])
            if connection.execute(insert.returning(live_items.c.seq), [row]).first() is not None:
                return None
            held = connection.execute(sa.select(live_items.c.record).where(live_items.c.item_id == item_id))
            return str(held.scalar_one())

    def live_items_after(self, seq: int) -> list[tuple[int, str]]:
        """(seq, JSON record) of every item added live after `seq`, in the order the database took them."""
        query = (
            sa.select(live_items.c.seq, live_items.c.record).where(live_items.c.seq > seq).order_by(live_items.c.seq)
        )
        with self.engine.connect() as connection:
            return [(int(q), str(r)) for q, r in connection.execute(query)]

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
