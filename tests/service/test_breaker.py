"""The Redis circuit breaker: its states, a trial that ends without a verdict, one breaker for cache and events."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.store.breaker import CircuitBreaker, Permit
from service.store.cache import CacheResult, RedisEmbeddingCache
from service.store.events import EventReadFailed, RedisEventCache

NEVER_CONNECTED = "redis://127.0.0.1:1/0"  # the clients are never used: reads go to the pipeline given


def test_states() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=0.05)
    assert breaker.admit() is Permit.CLOSED
    breaker.failure()
    assert breaker.admit() is Permit.CLOSED
    breaker.failure()
    assert breaker.is_open
    assert breaker.admit() is None
    time.sleep(0.06)
    trial = breaker.admit()
    assert trial is Permit.TRIAL  # one trial call after the reset period
    assert breaker.admit() is None  # ...and only one
    breaker.failure()
    breaker.release(trial)
    assert breaker.admit() is None  # the failed trial opened it again
    time.sleep(0.06)
    trial = breaker.admit()
    assert trial is Permit.TRIAL
    breaker.success()
    breaker.release(trial)
    assert not breaker.is_open
    assert breaker.admit() is Permit.CLOSED


def test_an_ordinary_call_ending_does_not_end_the_trial() -> None:
    """A call let through while the breaker was closed may end after it opened and its trial began: handing
    back its permit must not let a second trial through beside the first."""
    breaker = CircuitBreaker(failures=1, reset_s=0.01)
    early = breaker.admit()
    assert early is Permit.CLOSED
    breaker.failure()
    time.sleep(0.02)
    assert breaker.admit() is Permit.TRIAL
    breaker.release(early)
    assert breaker.admit() is None


class HangingReads:
    """A read pipeline whose reads never answer (a hung Redis, as seen from a caller)."""

    async def execute(self, *args: object) -> object:
        await asyncio.sleep(3600)
        return None


class FailingReads:
    async def execute(self, *args: object) -> object:
        raise ConnectionError("refused")


def stores(reads: object, breaker: CircuitBreaker) -> tuple[RedisEmbeddingCache, RedisEventCache]:
    cache = RedisEmbeddingCache(
        NEVER_CONNECTED,
        ttl_s=60,
        dim=4,
        socket_timeout_s=30.0,
        connect_timeout_s=30.0,
        pool_size=1,
        breaker=breaker,
        reads=reads,  # type: ignore[arg-type]
    )
    events = RedisEventCache(
        NEVER_CONNECTED,
        cap=10,
        ttl_s=60,
        timeout_s=30.0,
        pool_size=1,
        reads=reads,
        breaker=breaker,  # type: ignore[arg-type]
    )
    return cache, events


@pytest.mark.parametrize("store", ["cache", "events"])
def test_a_cancelled_trial_does_not_leave_the_breaker_open(store: str) -> None:
    """The half-open trial cancelled from outside (a request deadline) neither succeeds nor fails: the next call
    after it may try again, instead of Redis being skipped until restart."""

    async def scenario() -> Permit | None:
        breaker = CircuitBreaker(failures=1, reset_s=0.01)
        cache, events = stores(HangingReads(), breaker)
        breaker.failure()  # open
        await asyncio.sleep(0.02)  # the reset period passes: the next call is the trial
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the request's deadline cancels the trial
                await (cache.get("k") if store == "cache" else events.recent("u"))
        await asyncio.sleep(0.02)
        permit = breaker.admit()  # a new trial (without the release: never again)
        await cache.close()
        await events.close()
        return permit

    assert asyncio.run(scenario()) is Permit.TRIAL


def test_event_read_errors_open_the_breaker_the_cache_shares() -> None:
    """One breaker per Redis: the event cache's failed reads open it, and then neither cache asks Redis (no
    request waits out a timeout) until the reset period has passed; cache fills are skipped at once."""

    async def scenario() -> None:
        breaker = CircuitBreaker(failures=2, reset_s=60)
        cache, events = stores(FailingReads(), breaker)
        for _ in range(2):
            with pytest.raises(EventReadFailed) as failed:
                await events.recent("u")
            assert not failed.value.bypassed
        assert breaker.is_open
        assert (await cache.get("k")) == (None, CacheResult.BYPASS)
        assert await cache.set("k", np.zeros(4, np.float32)) is CacheResult.BYPASS
        with pytest.raises(EventReadFailed) as skipped:
            await events.recent("u")
        assert skipped.value.bypassed
        assert not await events.fill("u", ["1"], overwrite=True)
        assert await cache.status() == "breaker_open"
        await cache.close()
        await events.close()

    asyncio.run(scenario())
