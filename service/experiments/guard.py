"""The post-publish guard: does the bundle served now do worse with users than the one it replaced?

Both bundles' lists are read from the impressions (the one before: its lists in the `window_s` before the
current one's first), and their CTR@k compared as an experiment's two variants are (`service.experiments.results`:
the always-valid test, safe to repeat every round). Once each has `min_lists` lists, a significantly lower CTR
sets `reco_bundle_ctr_regression` to 1: the alert RecsysBundleCTRRegressed (deploy/prometheus/alerts.yml) fires,
and the dashboard offers the registry's rollback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from service.core.metrics import Metrics
from service.experiments.results import results
from service.store import experiments as store
from service.store.records import Records, RecordsUnavailable

log = logging.getLogger(__name__)
WINDOW_S = 86_400.0


def compare(engine: Any, current: str, *, k: int, min_lists: int, window_s: float = WINDOW_S) -> dict[str, Any]:
    """The guard's verdict (blocking: the database threads)."""
    versions = store.bundle_versions(engine)
    first = {v: t for v, t, _ in versions}
    before = [v for v, t, _ in versions if v != current and (current not in first or t < first[current])]
    out: dict[str, Any] = {"current": current, "previous": before[-1] if before else None, "regression": False}
    if not before or current not in first:
        out["reason"] = "no lists of both bundles recorded yet"
        return out
    previous = before[-1]
    shown = store.shown(engine, bundle_versions=[previous, current], since=first[current] - window_s)
    as_variants = [replace(s, variant=s.bundle_version) for s in shown]
    compared = results(as_variants, [previous, current], k=k, n_items=0, bucket_s=window_s / 24)
    out["variants"] = compared["variants"]
    lists = [compared["variants"][v]["lists"] for v in (previous, current)]
    test = compared["variants"][current]["against_control"]["ctr"]
    if min(lists) < min_lists:
        out["reason"] = f"waiting for {min_lists} lists of each (have {lists[0]} and {lists[1]})"
        return out
    out["regression"] = bool(test["significant"] and (test["difference"] or 0.0) < 0)
    out["reason"] = "significantly lower CTR" if out["regression"] else "no significant drop"
    return out


async def compare_bundles(records: Records, current: str, *, k: int, min_lists: int) -> dict[str, Any]:
    """`compare` in the database threads; raises RecordsUnavailable."""
    call = functools.partial(compare, records.engine, current, k=k, min_lists=min_lists)
    return await records.run(call, timeout_s=30.0)


async def watch(
    records: Records, metrics: Metrics, served: Callable[[], str], *, min_lists: int, every_s: float = 60.0
) -> None:
    """Every `every_s`, the guard's verdict on the bundle served into `reco_bundle_ctr_regression`. Runs until
    cancelled."""
    while True:
        await asyncio.sleep(every_s)
        try:
            verdict = await compare_bundles(records, served(), k=10, min_lists=min_lists)
        except RecordsUnavailable:
            continue
        except Exception:  # never end the loop
            log.exception("the post-publish guard failed")
            continue
        metrics.bundle_ctr_regression.set(1 if verdict["regression"] else 0)
        if verdict["regression"]:
            log.warning("bundle %s: live CTR significantly below %s's", verdict["current"], verdict["previous"])
