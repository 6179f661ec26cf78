"""The user-embedding cache: Redis when configured, else a bounded in-process LRU.

The cache is an optimisation, never a dependency: every failure (refused, hung, slow, garbage) becomes a
result the caller counts and then ignores, computing the embedding instead. Against Redis, commands have
short socket/connect timeouts and no retries, and a circuit breaker (`service.store.breaker`, one per Redis, shared
with the recent-events cache) skips Redis entirely for a while after repeated errors, so a dead or hung server costs at
most one short timeout per breaker period.
Values are raw float32 bytes; keys carry the bundle version, so a new model never reads an old model's vectors.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections import OrderedDict
from typing import Protocol

import numpy as np
from redis.exceptions import RedisError

from service.store.breaker import CircuitBreaker
from service.store.redis_batch import Reads, open_client


class CacheResult(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    ERROR = "error"  # the backend failed or answered garbage; the request went on without it
    BYPASS = "bypass"  # the breaker is open: the backend was not asked
    STORED = "stored"


class EmbeddingCache(Protocol):
    backend: str

    async def get(self, key: str) -> tuple[np.ndarray | None, CacheResult]: ...

    async def set(self, key: str, value: np.ndarray) -> CacheResult: ...

    async def delete_user(self, user_id: str) -> int:
        """Remove every embedding cached for `user_id` (any bundle version, with or without events); the count.
        Raises CacheUnavailable if the backend cannot be reached (a deletion must not pass silently)."""
        ...

    async def status(self) -> str: ...

    async def close(self) -> None: ...


class CacheUnavailable(Exception):
    """The cache backend could not carry out an operation that must not be skipped (a user's deletion)."""


def is_user_key(key: str, user_id: str) -> bool:
    """Whether `key` (reco:<version>:user_emb:<user id>[:ev:<16 hex digits>]) belongs to `user_id`. Bundle
    versions contain no ':', so the user id is what follows the first ':user_emb:', less an event digest."""
    _, sep, rest = key.partition(":user_emb:")
    if not sep or not rest.startswith(user_id):
        return False
    suffix = rest[len(user_id) :]
    return not suffix or _EVENT_SUFFIX.fullmatch(suffix) is not None


_EVENT_SUFFIX = re.compile(r":ev:[0-9a-f]{16}")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _decode(raw: bytes, dim: int) -> np.ndarray | None:
    if len(raw) != 4 * dim:
        return None
    return np.frombuffer(raw, dtype=np.float32).copy()


class LocalEmbeddingCache:
    """Bounded LRU with a TTL, for one process. Runs on the event loop only (no locking needed)."""

    backend = "local"

    def __init__(self, max_entries: int, ttl_s: float, dim: int) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._dim = dim

    async def get(self, key: str) -> tuple[np.ndarray | None, CacheResult]:
        entry = self._entries.get(key)
        if entry is None:
            return None, CacheResult.MISS
        expires, raw = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None, CacheResult.MISS
        self._entries.move_to_end(key)
        return _decode(raw, self._dim), CacheResult.HIT

    async def set(self, key: str, value: np.ndarray) -> CacheResult:
        if self._max == 0:
            return CacheResult.STORED
        self._entries[key] = (time.monotonic() + self._ttl, value.astype(np.float32).tobytes())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return CacheResult.STORED

    def __len__(self) -> int:
        return len(self._entries)

    async def delete_user(self, user_id: str) -> int:
        keys = [k for k in self._entries if is_user_key(k, user_id)]
        for k in keys:
            del self._entries[k]
        return len(keys)

    async def status(self) -> str:
        return "ok"

    async def close(self) -> None:
        self._entries.clear()


class RedisEmbeddingCache:
    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        dim: int,
        *,
        socket_timeout_s: float,
        connect_timeout_s: float,
        pool_size: int,
        breaker: CircuitBreaker,
        reads: Reads,
        password: str | None = None,
    ) -> None:
        self._client = open_client(
            url,
            password=password,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            pool_size=pool_size,
        )
        # A hard bound on each call, in case a timeout is not enforced somewhere inside the client.
        self._deadline_s = socket_timeout_s + connect_timeout_s
        self._ttl = ttl_s
        self._dim = dim
        self.breaker = breaker
        # GETs go out through `reads`, the read pipeline shared with the recent-events cache (its owner closes it): one
        # round trip for concurrent requests' reads. Its timeouts are the longer ones: this cache's shorter
        # deadline still applies to its own reads (asyncio.timeout below).
        self._reads = reads

    async def get(self, key: str) -> tuple[np.ndarray | None, CacheResult]:
        permit = self.breaker.admit()
        if permit is None:
            return None, CacheResult.BYPASS
        try:
            async with asyncio.timeout(self._deadline_s):
                raw = await self._reads.execute("get", key)
        except (RedisError, OSError, TimeoutError):
            self.breaker.failure()
            return None, CacheResult.ERROR
        finally:
            self.breaker.release(permit)
        self.breaker.success()
        if raw is None:
            return None, CacheResult.MISS
        value = _decode(raw, self._dim) if isinstance(raw, bytes) else None
        return (value, CacheResult.HIT) if value is not None else (None, CacheResult.ERROR)

    async def set(self, key: str, value: np.ndarray) -> CacheResult:
        permit = self.breaker.admit()
        if permit is None:
            return CacheResult.BYPASS
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.set(key, value.astype(np.float32).tobytes(), ex=self._ttl)
        except (RedisError, OSError, TimeoutError):
            self.breaker.failure()
            return CacheResult.ERROR
        finally:
            self.breaker.release(permit)
        self.breaker.success()
        return CacheResult.STORED

    async def delete_user(self, user_id: str) -> int:
        """SCAN for the user's keys (every bundle version, every event digest) and delete them: O(keyspace),
        an admin operation. The breaker is not consulted: Redis is asked, and a failure is an error."""
        pattern = f"reco:*:user_emb:{_glob_escape(user_id)}*"
        try:
            async with asyncio.timeout(max(5.0, 20 * self._deadline_s)):
                keys = [k async for k in self._client.scan_iter(match=pattern, count=1000)]
                mine = [k for k in keys if is_user_key(k.decode() if isinstance(k, bytes) else str(k), user_id)]
                return int(await self._client.delete(*mine)) if mine else 0
        except (RedisError, OSError, TimeoutError) as e:
            raise CacheUnavailable(f"the embedding cache (Redis) did not take the delete: {e!r}") from e

    async def status(self) -> str:
        permit = self.breaker.admit()
        if permit is None:
            return "breaker_open"
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError):
            self.breaker.failure()
            return "unreachable"
        finally:
            self.breaker.release(permit)
        self.breaker.success()
        return "ok"

    async def close(self) -> None:
        await self._client.aclose()
