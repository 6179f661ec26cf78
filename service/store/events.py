"""Recent user events, cached: what a user did lately, so the next request already reflects it.

The events themselves live in the system of record (`service.store.records`): a write is acknowledged once the
database has committed it. This module caches each user's latest events as a capped list of entries, oldest
first: an item id for an interaction (it joins the user's history: the user tower's input, the ranker's history
features and the already-seen filter), or `!` + item id for a dislike (only filtered out). Ids, not bundle
indices, are stored, so events outlive a bundle change. Backends: Redis (a list per user with a TTL, shared by
replicas) or an in-process cache bounded in users (one process only).

A cached list is complete (the user's latest events as the database holds them) or absent: `recent` answers
None for a user it does not hold, and the caller reads the database and `fill`s the cache. A list starts with a
marker entry, so a user with no events is cached too. After a write the writer fills the list from the
database with `overwrite=True`; a reader's fill (`overwrite=False`) only takes an empty slot, so a reader that
read the database before a write cannot put back a list without it.

A failed read (`EventReadFailed`) sends the request to the database; cache writes that fail are counted and
dropped (the database has the events). Redis calls go through the breaker of the Redis they share with the
embedding cache (`service.store.breaker`): while it is open they fail at once instead of each waiting out a timeout.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

from redis.exceptions import RedisError

from service.store.breaker import CircuitBreaker
from service.store.redis_batch import Reads, open_client

DISLIKE_PREFIX = "!"
MARKER = "~"  # the first entry of every cached list: "this user's events are cached" (never an item entry)
EMPTY_TTL_S = 3600  # a user with no events at all is cached this long at most (anonymous traffic's ids expire)


class EventStoreUnavailable(Exception):
    """The system of record did not take the write (the API answers 503: retry)."""


class EventReadFailed(Exception):
    """A user's cached events could not be read; `bypassed`: Redis was not asked (its breaker is open)."""

    def __init__(self, message: str, *, bypassed: bool) -> None:
        super().__init__(message)
        self.bypassed = bypassed


class EventCache(Protocol):
    backend: str

    async def recent(self, user_id: str) -> list[str] | None:
        """The user's cached entries, oldest first; None if the cache does not hold the user. Raises
        EventReadFailed."""
        ...

    async def fill(self, user_id: str, entries: list[str], *, overwrite: bool) -> bool:
        """Cache the user's entries (as the database holds them); without `overwrite` only if the user is not
        cached. False if the cache could not be written."""
        ...

    async def delete(self, user_id: str) -> bool:
        """Forget the user; True if anything was held. Raises EventStoreUnavailable."""
        ...

    async def close(self) -> None: ...


def cached(raw: list[str]) -> list[str] | None:
    """A cached list's entries without its marker; None for a list that is not a complete cache entry."""
    if not raw or raw[0] != MARKER:
        return None
    return raw[1:]


class LocalEventCache:
    """In-process: up to `max_users` users (least recently written dropped first), `cap` entries each.
    Used from the event loop only."""

    backend = "local"

    def __init__(self, cap: int, max_users: int) -> None:
        self._cap = cap
        self._max_users = max_users
        self._users: OrderedDict[str, list[str]] = OrderedDict()

    async def recent(self, user_id: str) -> list[str] | None:
        held = self._users.get(user_id)
        return list(held) if held is not None else None

    async def fill(self, user_id: str, entries: list[str], *, overwrite: bool) -> bool:
        if overwrite or user_id not in self._users:
            self._users[user_id] = list(entries[-self._cap :])
            self._users.move_to_end(user_id)
            while len(self._users) > self._max_users:
                self._users.popitem(last=False)
        return True

    async def delete(self, user_id: str) -> bool:
        return self._users.pop(user_id, None) is not None

    async def close(self) -> None:
        self._users.clear()


# KEYS[1]: the list; ARGV[1]: 1 to overwrite; ARGV[2]: TTL; ARGV[3..]: the marker and the entries.
_FILL = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisEventCache:
    """`reco:events:<user id>` lists, the marker first, filled by a script (check and write at once)."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        cap: int,
        ttl_s: int,
        *,
        timeout_s: float,
        pool_size: int,
        reads: Reads,
        breaker: CircuitBreaker,
        password: str | None = None,
    ) -> None:
        self._client = open_client(
            url, password=password, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s, pool_size=pool_size
        )
        self.breaker = breaker
        self._cap = cap
        self._ttl = ttl_s
        self._deadline_s = 2 * timeout_s
        self._fill = self._client.register_script(_FILL)
        # LRANGEs go out through `reads`, the read pipeline shared with the embedding cache (its owner closes it).
        self._reads = reads

    @staticmethod
    def key(user_id: str) -> str:
        return f"reco:events:{user_id}"

    async def recent(self, user_id: str) -> list[str] | None:
        permit = self.breaker.admit()
        if permit is None:
            raise EventReadFailed("Redis is skipped (breaker open)", bypassed=True)
        try:
            async with asyncio.timeout(self._deadline_s):
                raw = await self._reads.execute("lrange", self.key(user_id), 0, -1)
        except (RedisError, OSError, TimeoutError) as e:
            self.breaker.failure()
            raise EventReadFailed(f"reading the user's events from Redis: {e!r}", bypassed=False) from e
        finally:
            self.breaker.release(permit)
        self.breaker.success()
        return cached([v.decode() if isinstance(v, bytes) else str(v) for v in raw])

    async def fill(self, user_id: str, entries: list[str], *, overwrite: bool) -> bool:
        permit = self.breaker.admit()
        if permit is None:
            return False
        ttl = self._ttl if entries else min(self._ttl, EMPTY_TTL_S)
        try:
            async with asyncio.timeout(self._deadline_s):
                args = ["1" if overwrite else "0", ttl, MARKER, *entries[-self._cap :]]
                await self._fill(keys=[self.key(user_id)], args=args)
        except (RedisError, OSError, TimeoutError):
            self.breaker.failure()
            return False
        finally:
            self.breaker.release(permit)
        self.breaker.success()
        return True

    async def delete(self, user_id: str) -> bool:
        """Not behind the breaker: a deletion is tried, and fails loudly."""
        try:
            async with asyncio.timeout(self._deadline_s):
                return bool(await self._client.delete(self.key(user_id)))
        except (RedisError, OSError, TimeoutError) as e:
            raise EventStoreUnavailable(f"the event cache (Redis) did not take the delete: {e!r}") from e

    async def close(self) -> None:
        await self._client.aclose()
