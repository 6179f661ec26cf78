"""The embedding refresh after events (service.recommend.refresh): coalesced, bounded, failures contained,
deletion-safe."""

from __future__ import annotations

import asyncio

import pytest

from service.recommend.refresh import Refresher


class Recorder:
    """A refresh function that records its calls and can be held (an encoder call in progress) or fail."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.dropped = 0
        self.failed = 0

    async def __call__(self, jobs: list[tuple[str, int]]) -> None:
        self.calls.append(list(jobs))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("encoder failed")

    def refresher(self, max_batch: int = 10, max_pending: int = 100) -> Refresher[int]:
        def drop(n: int) -> None:
            self.dropped += n

        def failure(n: int) -> None:
            self.failed += n

        return Refresher(self, max_batch=max_batch, max_pending=max_pending, on_drop=drop, on_failure=failure)


def test_users_waiting_are_coalesced_and_refreshed_in_batches() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        refresher = recorder.refresher(max_batch=3)
        recorder.gate = asyncio.Event()
        refresher.submit([("a", 1)])
        await asyncio.sleep(0)  # "a" is being refreshed; the next ones wait
        refresher.submit([("b", 1), ("c", 1), ("b", 2), ("d", 1), ("e", 1)])
        refresher.submit([("c", 2)])
        recorder.gate.set()
        await refresher.idle()
        assert not refresher.busy
        return recorder

    recorder = asyncio.run(scenario())
    # One call at a time, at most 3 users each; a user's newer events replace the ones waiting.
    assert recorder.calls == [[("a", 1)], [("b", 2), ("c", 2), ("d", 1)], [("e", 1)]]
    assert recorder.dropped == recorder.failed == 0


def test_past_max_pending_a_new_user_is_dropped_and_counted() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        refresher = recorder.refresher(max_batch=10, max_pending=2)
        refresher.submit([("a", 1), ("b", 1), ("c", 1), ("a", 2)])  # "c" finds no room; "a" is already waiting
        await refresher.idle()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.calls == [[("a", 2), ("b", 1)]]
    assert recorder.dropped == 1


def test_a_failed_refresh_is_counted_and_the_next_ones_still_run() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        refresher = recorder.refresher()
        recorder.fail = True
        refresher.submit([("a", 1), ("b", 1)])
        await refresher.idle()
        recorder.fail = False
        refresher.submit([("c", 1)])
        await refresher.idle()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.calls == [[("a", 1), ("b", 1)], [("c", 1)]]
    assert recorder.failed == 2


def test_forget_drops_a_waiting_refresh_and_waits_for_one_in_progress() -> None:
    async def scenario() -> tuple[Recorder, list[str]]:
        recorder = Recorder()
        refresher = recorder.refresher(max_batch=1)
        recorder.gate = asyncio.Event()
        refresher.submit([("a", 1), ("b", 1)])
        await asyncio.sleep(0)  # "a" in progress, "b" waiting
        await refresher.forget("b")
        order: list[str] = []

        async def forget_a() -> None:
            await refresher.forget("a")
            order.append("forgot a")

        forgetting = asyncio.create_task(forget_a())
        await asyncio.sleep(0.01)
        order.append("refresh of a released")
        recorder.gate.set()
        await forgetting
        await refresher.idle()
        return recorder, order

    recorder, order = asyncio.run(scenario())
    assert recorder.calls == [[("a", 1)]]  # "b" was never refreshed
    assert order == ["refresh of a released", "forgot a"]  # forget("a") returned only once its refresh was done


def test_close_cancels_and_takes_nothing_more() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        refresher = recorder.refresher()
        recorder.gate = asyncio.Event()  # never set: the call in progress hangs until cancelled
        refresher.submit([("a", 1)])
        await asyncio.sleep(0)
        await refresher.close()
        refresher.submit([("b", 1)])
        assert not refresher.busy
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.calls == [[("a", 1)]]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Recorder().refresher(max_pending=0)
