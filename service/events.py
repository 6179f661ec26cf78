"""Fresh user events: what a user did since the bundle was trained, so the next request already reflects it.

Each user's recent events are a capped list of entries, oldest first: an item id for an interaction (it joins
the user's history: the user tower's input, the ranker's history features and the already-seen filter), or
`!` + item id for a dislike (only filtered out). Ids, not bundle indices, are stored, so events outlive a
bundle change. Backends: Redis (a list per user, trimmed to the cap, with a TTL; shared by replicas) or an
in-process store bounded in users (the embedded default; one process only).

Unlike the embedding cache, this store holds data: a write that Redis does not acknowledge raises
`EventStoreUnavailable` (the API answers 503, the client retries), never a silent drop. A failed *read*
(`EventReadFailed`) degrades the request to the bundle's history and is counted. Reads and writes go through
the breaker of the Redis they share with the embedding cache (`service.breaker`): while it is open they fail at
once instead of each waiting out a timeout.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Protocol

from redis.exceptions import RedisError

from service.breaker import CircuitBreaker
from service.redis_batch import ReadPipeline, open_client

DISLIKE_PREFIX = "!"


class EventStoreUnavailable(Exception):
    """The backend did not take the write."""


class EventReadFailed(Exception):
    """A user's events could not be read; `bypassed`: Redis was not asked (its breaker is open)."""

    def __init__(self, message: str, *, bypassed: bool) -> None:
        super().__init__(message)
        self.bypassed = bypassed


class EventStore(Protocol):
    backend: str

    async def append(self, events: dict[str, list[str]]) -> None:
        """Append each user's entries (oldest first)."""
        ...

    async def recent(self, user_id: str) -> list[str]:
        """The user's entries, oldest first. Raises EventReadFailed."""
        ...

    async def delete(self, user_id: str) -> bool:
        """Forget the user; True if anything was held."""
        ...

    async def close(self) -> None: ...


class LocalEventStore:
    """In-process: up to `max_users` users (least recently written dropped first), `cap` entries each.
    Used from the event loop only."""

    backend = "local"

    def __init__(self, cap: int, max_users: int) -> None:
        self._cap = cap
        self._max_users = max_users
        self._users: OrderedDict[str, deque[str]] = OrderedDict()

    async def append(self, events: dict[str, list[str]]) -> None:
        for user_id, entries in events.items():
            held = self._users.get(user_id)
            if held is None:
                held = self._users[user_id] = deque(maxlen=self._cap)
            held.extend(entries)
            self._users.move_to_end(user_id)
        while len(self._users) > self._max_users:
            self._users.popitem(last=False)

    async def recent(self, user_id: str) -> list[str]:
        held = self._users.get(user_id)
        return list(held) if held is not None else []

    async def delete(self, user_id: str) -> bool:
        return self._users.pop(user_id, None) is not None

    async def close(self) -> None:
        self._users.clear()


class RedisEventStore:
    """`reco:events:<user id>` lists: RPUSH + LTRIM + EXPIRE in one transaction per write."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        cap: int,
        ttl_s: int,
        *,
        timeout_s: float,
        pool_size: int,
        reads: ReadPipeline,
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
        # LRANGEs go out through `reads`, the read pipeline shared with the embedding cache (its owner closes it).
        self._reads = reads

    @staticmethod
    def key(user_id: str) -> str:
        return f"reco:events:{user_id}"

    async def append(self, events: dict[str, list[str]]) -> None:
        permit = self.breaker.admit()
        if permit is None:
            raise EventStoreUnavailable("the event store (Redis) is skipped after repeated errors; retry shortly")
        try:
            async with asyncio.timeout(self._deadline_s):
                async with self._client.pipeline(transaction=True) as pipe:
                    for user_id, entries in events.items():
                        key = self.key(user_id)
                        pipe.rpush(key, *entries)
                        pipe.ltrim(key, -self._cap, -1)
                        pipe.expire(key, self._ttl)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as e:
            self.breaker.failure()
            raise EventStoreUnavailable(f"the event store (Redis) did not take the write: {e!r}") from e
        finally:
            self.breaker.release(permit)
        self.breaker.success()

    async def recent(self, user_id: str) -> list[str]:
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
        return [v.decode() if isinstance(v, bytes) else str(v) for v in raw]

    async def delete(self, user_id: str) -> bool:
        try:
            async with asyncio.timeout(self._deadline_s):
                return bool(await self._client.delete(self.key(user_id)))
        except (RedisError, OSError, TimeoutError) as e:
            raise EventStoreUnavailable(f"the event store (Redis) did not take the delete: {e!r}") from e

    async def close(self) -> None:
        await self._client.aclose()
