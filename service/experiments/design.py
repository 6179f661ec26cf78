"""Experiments and their variants, and which variant a user gets.

An experiment splits users between variants by traffic share: a user's variant is a stable hash of the
experiment's name and the user id, so a user sees one variant for the whole experiment, on every replica, and a
new experiment reshuffles users independently of the last. A variant is a bundle version (`bundle`: served beside
the published one, `service.serving.variants`; None: the bundle served) and a treatment of its ranking: the
bundle's own ordering or most-popular (`ordering`), a diversity weight (`diversity`: maximal marginal relevance,
`service.experiments.diversity`), exploration (`exploration`: the expected share of slots given to items the model
ranked lower or showed rarely, `service.experiments.exploration`).

`Experiments` holds the one running experiment of this process, replaced by the follower (`follow`) within the
sync interval of a change on any replica.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from service.store import experiments as store
from service.store.experiments import ExperimentRow
from service.store.records import Records, RecordsUnavailable

log = logging.getLogger(__name__)

Ordering = Literal["model", "popular"]
ORDERINGS: tuple[str, ...] = ("model", "popular")
MAX_EXPLORATION = 0.5  # at most half the slots, in expectation, go to exploration
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    share: float  # of the experiment's users
    ordering: Ordering = "model"  # model: the bundle's ordering; popular: most popular, unseen
    exploration: float = 0.0  # expected share of slots explored (0: none)
    exploration_pool: int = 50  # how far past the k-th item exploration and diversity draw from
    diversity: float = 0.0  # maximal marginal relevance's weight on dissimilarity (0: the ranking as it is)
    bundle: str | None = None  # a bundle version under the bundles root, served beside (None: the one served)

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Variant:
        return cls(**spec)

    def spec(self) -> dict[str, Any]:
        return asdict(self)


CONTROL = Variant("control", 1.0)  # outside any experiment: the bundle's ordering, no exploration


def normalised(variants: list[Variant]) -> list[Variant]:
    """The variants with their shares scaled to sum to 1 (shares are relative weights)."""
    total = sum(v.share for v in variants)
    return [replace(v, share=v.share / total) for v in variants]


def check_variants(variants: list[Variant]) -> str | None:
    """What is wrong with `variants` as an experiment's split (None: nothing): at least two, unique names, positive
    non-negative shares summing to 1, a known ordering, exploration within [0, MAX_EXPLORATION], diversity within
    [0, 1]."""
    if len(variants) < 2:
        return "an experiment needs at least two variants"
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        return f"variant names must be unique, got {names}"
    if any(not 0 <= v.share <= 1 for v in variants):  # (a tiny relative share may normalise to 0: never assigned)
        return "every share must be in [0, 1]"
    if abs(sum(v.share for v in variants) - 1.0) > SHARE_TOLERANCE:
        return f"the shares must sum to 1, got {sum(v.share for v in variants):.6g}"
    for v in variants:
        if v.ordering not in ORDERINGS:
            return f"variant {v.name!r}: ordering must be one of {list(ORDERINGS)}"
        if not 0 <= v.exploration <= MAX_EXPLORATION:
            return f"variant {v.name!r}: exploration must be within [0, {MAX_EXPLORATION}]"
        if not 0 <= v.diversity <= 1:
            return f"variant {v.name!r}: diversity must be within [0, 1]"
    return None


def bucket(experiment: str, user_id: str) -> float:
    """The user's stable position in [0, 1) for `experiment` (BLAKE2b of both: uniform, independent across
    experiments)."""
    digest = hashlib.blake2b(f"{experiment}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    started_at: float | None = None

    @classmethod
    def of(cls, row: ExperimentRow) -> Experiment:
        return cls(row.name, tuple(Variant.of(v) for v in row.variants), row.started_at)

    @property
    def bundles(self) -> set[str]:
        """The bundle versions its variants name."""
        return {v.bundle for v in self.variants if v.bundle is not None}

    def assign(self, user_id: str) -> Variant:
        """The user's variant: the one whose share interval holds the user's bucket."""
        position, edge = bucket(self.name, user_id), 0.0
        for variant in self.variants:
            edge += variant.share
            if position < edge:
                return variant
        return self.variants[-1]  # shares summing to 1 - rounding


class Experiments:
    """The experiment this process runs (None: none), as the follower last read it."""

    def __init__(self) -> None:
        self.running: Experiment | None = None

    def assign(self, user_id: str) -> tuple[str | None, Variant]:
        """(the running experiment's name or None, the user's variant: CONTROL outside any experiment)."""
        running = self.running
        if running is None:
            return None, CONTROL
        return running.name, running.assign(user_id)

    def follow(self, row: ExperimentRow | None) -> bool:
        """Take the running experiment as the database holds it; whether it changed."""
        new = Experiment.of(row) if row is not None else None
        changed = new != self.running
        self.running = new
        return changed


Prepare = Callable[["Experiment | None"], Awaitable[None]]


async def follow(experiments: Experiments, records: Records, every_s: float, prepare: Prepare) -> None:
    """Every `every_s`, read which experiment runs (any replica may have started or stopped one) into
    `experiments`, after `prepare` has made ready what it needs (the bundles its variants name: called every round,
    so a bundle that went away is opened again). Runs until cancelled; while the database is away the last one read
    keeps running."""
    while True:
        try:
            row = await records.run(functools.partial(store.running, records.engine))
        except RecordsUnavailable:
            pass  # the last experiment read keeps running
        else:
            await prepare(Experiment.of(row) if row is not None else None)
            if experiments.follow(row):
                running = experiments.running
                log.info("experiment running: %s", running.name if running is not None else "none")
        await asyncio.sleep(every_s)
