"""The bundles an experiment's variants name, served beside the published one.

A variant may name a bundle version (`Variant.bundle`): each process opens it from under the bundles root when the
experiment starts (validated and warmed up like a reload, before any user is assigned to it), serves that variant's
users from it, and closes it when no running experiment names it. A bundle that does not load is refused once and
logged; while a variant's bundle is not open in a process, that process serves the variant's users the published
bundle outside the experiment (their lists are not counted for it), so a variant's figures only ever come from its
own bundle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.core.metrics import Metrics
from service.serving.resources import Serving

log = logging.getLogger(__name__)


class VariantServings:
    """Bundle version -> its `Serving`, for the versions the running experiment names (less the one published)."""

    def __init__(self, open_version: Callable[[str], Awaitable[Serving]], metrics: Metrics) -> None:
        self._open_version = open_version  # loads, validates and warms a version from under the bundles root
        self._metrics = metrics
        self.servings: dict[str, Serving] = {}
        self.refused: set[str] = set()  # versions that did not load: not retried while an experiment names them
        self._lock = asyncio.Lock()  # the follower and the admin routes: one change at a time

    def get(self, version: str) -> Serving | None:
        return self.servings.get(version)

    async def follow(self, wanted: set[str], published: str) -> None:
        """Open the versions in `wanted` that are not open (the published one is served already), close the ones
        no longer wanted. Never raises: a version that does not load is logged, counted and refused."""
        async with self._lock:
            await self._follow(wanted, published)

    async def _follow(self, wanted: set[str], published: str) -> None:
        for version in sorted(wanted - self.servings.keys() - self.refused - {published}):
            try:
                self.servings[version] = await self._open_version(version)
            except Exception as e:  # an unloadable bundle (BundleError, OSError, ...) must not end the follower
                self.refused.add(version)
                self._metrics.reloads.labels("refused").inc()
                log.error("bundle %s, named by an experiment's variant, could not be opened: %s", version, e)
                continue
            log.info("serving bundle %s beside %s for an experiment's variant", version, published)
        self.refused &= wanted  # a version named again by a later experiment is tried again
        for version in sorted(self.servings.keys() - (wanted - {published})):
            serving = self.servings.pop(version)
            await serving.recommender.close()  # requests in flight on it finish first (as after a reload)
            log.info("closed bundle %s: no running experiment names it", version)

    async def close(self) -> None:
        await self.follow(set(), "")
