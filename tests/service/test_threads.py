"""LifoThreadPool: an executor like ThreadPoolExecutor, except that work goes to the thread that went idle last."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import CancelledError

import pytest

from service.core.threads import LifoThreadPool


def start_all_threads(pool: LifoThreadPool, n: int) -> None:
    """n tasks that wait for each other: the pool has n threads afterwards, all idle."""
    barrier = threading.Barrier(n)
    futures = [pool.submit(barrier.wait, 5) for _ in range(n)]
    for f in futures:
        f.result(5)


def test_a_task_at_a_time_runs_on_the_thread_that_ran_the_last_one() -> None:
    pool = LifoThreadPool(4, thread_name_prefix="t")
    try:
        start_all_threads(pool, 4)
        names = [pool.submit(lambda: threading.current_thread().name).result(5) for _ in range(40)]
        assert len(set(names)) == 1, names  # a pool that wakes its longest-idle thread cycles through all 4
        # Two at a time: the two most recently idle threads, no others.
        pairs: set[str] = set()
        for _ in range(20):
            barrier = threading.Barrier(2)

            def meet(b: threading.Barrier = barrier) -> str:
                b.wait(5)
                return threading.current_thread().name

            futures = [pool.submit(meet) for _ in range(2)]
            pairs.update(f.result(5) for f in futures)
        assert len(pairs) == 2, pairs
    finally:
        pool.shutdown()


def test_more_tasks_than_threads_all_run_with_their_results_and_errors() -> None:
    threads: set[int] = set()
    initialised: list[int] = []
    pool = LifoThreadPool(3, initializer=lambda: initialised.append(threading.get_ident()))

    def task(i: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.001)
        if i % 7 == 0:
            raise ValueError(i)
        return i * i

    futures = [pool.submit(task, i) for i in range(100)]
    for i, f in enumerate(futures):
        if i % 7 == 0:
            with pytest.raises(ValueError, match=str(i)):
                f.result(10)
        else:
            assert f.result(10) == i * i
    pool.shutdown()
    assert len(threads) <= 3
    assert sorted(initialised) == sorted(threads)  # the initializer ran once in each thread, before its work


def test_shutdown_runs_the_queued_work_or_cancels_it_and_refuses_more() -> None:
    for cancel in (False, True):
        pool = LifoThreadPool(1)
        gate = threading.Event()
        first = pool.submit(gate.wait, 5)
        queued = [pool.submit(lambda i=i: i) for i in range(5)]
        threading.Timer(0.05, gate.set).start()
        pool.shutdown(wait=True, cancel_futures=cancel)
        assert first.result() is True
        if cancel:
            for f in queued:
                with pytest.raises(CancelledError):
                    f.result(0)
        else:
            assert [f.result(0) for f in queued] == list(range(5))
        with pytest.raises(RuntimeError, match="shutdown"):
            pool.submit(lambda: None)


def test_a_failing_initializer_fails_the_task_and_a_later_thread_tries_again() -> None:
    calls: list[int] = []

    def initializer() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no native threads")

    pool = LifoThreadPool(1, initializer=initializer)
    with pytest.raises(RuntimeError, match="no native threads"):
        pool.submit(lambda: 1).result(5)
    assert pool.submit(lambda: 2).result(5) == 2
    pool.shutdown()


def test_asyncio_runs_blocking_work_in_it() -> None:
    pool = LifoThreadPool(2)

    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(pool, pow, i, 2) for i in range(10))))

    assert asyncio.run(run()) == [i * i for i in range(10)]
    pool.shutdown()
