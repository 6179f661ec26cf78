"""The compute thread pool: work goes to the thread that went idle last.

`concurrent.futures.ThreadPoolExecutor` has its idle threads wait on one queue, and the operating system wakes
the one that has waited longest: with a request at a time, each request ran on the next of the pool's threads in
turn, on whatever core that thread last ran, its caches (the thread's stack, ONNX Runtime's and OpenMP's
per-thread state, the arrays it last touched) cold. `LifoThreadPool` hands work to the most recently idle thread
instead, so a lone request runs where the previous one ran. Measured at 100K items, one worker process, a
request at a time (4 alternated runs): p50 3.03 -> 2.83 ms end to end, every stage faster. Under load every thread
is busy and the order matters little (2 processes at concurrency 16: 941 / 909 against 929 / 898 req/s).

Against `concurrent.futures.ThreadPoolExecutor` (RECO_COMPUTE_POOL=executor), `python -m benchmarks.mechanisms`,
100K items, one process, the 2-core VM, 2026-12-07, medians of 2 interleaved rounds: c=16 508 vs 470 req/s, p99 66
vs 65 ms; c=64 705 vs 592 req/s, p99 123 vs 153 ms (docs/performance.md): kept, +8 % and +19 % throughput.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    __slots__ = ("thread", "wake", "work")

    def __init__(self) -> None:
        self.wake = threading.Semaphore(0)
        self.work: _Work | None = None  # None when woken: stop
        self.thread: threading.Thread | None = None


class LifoThreadPool(Executor):
    """An executor of at most `max_workers` threads (started as needed, each running `initializer(*initargs)`
    first) that gives each task to the most recently idle thread, and queues tasks when all are busy."""

    def __init__(
        self,
        max_workers: int,
        thread_name_prefix: str = "pool",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._initializer = initializer
        self._initargs = initargs
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # a stack: the last to go idle is the first woken
        self._backlog: deque[_Work] = deque()
        self._workers: list[_Worker] = []
        self._shutdown = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        work: _Work = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            if self._idle:
                worker = self._idle.pop()
                worker.work = work
                worker.wake.release()
            elif len(self._workers) < self._max_workers:
                worker = _Worker()
                worker.work = work
                worker.thread = threading.Thread(
                    target=self._run, args=(worker,), name=f"{self._prefix}_{len(self._workers)}", daemon=True
                )
                self._workers.append(worker)
                worker.thread.start()
            else:
                self._backlog.append(work)
        return future

    def _run(self, worker: _Worker) -> None:
        work, worker.work = worker.work, None
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as e:  # this thread cannot run work: its task fails, a later one starts anew
                with self._lock:
                    self._workers.remove(worker)
                if work is not None and work[0].set_running_or_notify_cancel():
                    work[0].set_exception(e)
                return
        while work is not None:
            publish = self._execute(work)
            work = None
            with self._lock:
                stop = False
                if self._backlog:
                    work = self._backlog.popleft()
                elif self._shutdown:
                    stop = True
                else:
                    self._idle.append(worker)
            # The result is published once this thread is idle again: a caller that submits its next task as
            # soon as it has the result finds this thread, the most recently idle, ready for it.
            if publish is not None:
                publish()
            if stop:
                return
            if work is None:
                worker.wake.acquire()
                work, worker.work = worker.work, None

    @staticmethod
    def _execute(work: _Work) -> Callable[[], None] | None:
        """Run the task; what completes its future (called by `_run`), or None if it was cancelled."""
        future, fn, args, kwargs = work
        if not future.set_running_or_notify_cancel():
            return None
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            return functools.partial(future.set_exception, e)
        return functools.partial(future.set_result, result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._backlog:
                    self._backlog.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            for worker in idle:
                worker.work = None
                worker.wake.release()
            workers = list(self._workers)
        if wait:
            for worker in workers:
                if worker.thread is not None and worker.thread is not threading.current_thread():
                    worker.thread.join()
