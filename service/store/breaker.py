"""A circuit breaker for one Redis, in front of every call the service makes to it (embedding cache and events).

Closed: calls go through, and `failures` consecutive errors open it. Open: calls are skipped (the caller answers
without Redis at once) for `reset_s`; then one call is let through as a trial (half-open), which closes the
breaker on success or opens it again on failure. A hung Redis thus costs one timeout per `reset_s`, not one per
request. Used from the event loop only: no locking.

Each call holds a `Permit` from `admit()` and hands it back in a `finally` (`release`), whatever ended the call:
a trial cancelled from outside (a request's deadline) would otherwise leave the breaker waiting on a trial that
never reports, and Redis skipped until the process restarts.
"""

from __future__ import annotations

import enum
import time


class Permit(enum.Enum):
    CLOSED = "closed"  # an ordinary call
    TRIAL = "trial"  # the one call let through an open breaker once its reset time has passed


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._consecutive = 0
        self._open_until = 0.0
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self._consecutive >= self._threshold

    def admit(self) -> Permit | None:
        """A permit to call Redis, or None: skip it."""
        if not self.is_open:
            return Permit.CLOSED
        if time.monotonic() >= self._open_until and not self._trial_in_flight:
            self._trial_in_flight = True
            return Permit.TRIAL
        return None

    def success(self) -> None:
        self._consecutive = 0

    def failure(self) -> None:
        self._consecutive += 1
        if self._consecutive >= self._threshold:
            self._open_until = time.monotonic() + self._reset_s

    def release(self, permit: Permit) -> None:
        """The end of a call, whatever ended it (success, failure, cancellation). Call in a `finally`."""
        if permit is Permit.TRIAL:
            self._trial_in_flight = False
