"""The post-publish guard: does the bundle served now do worse with users than the one it replaced?

Both bundles' lists are counted from the impressions (the one before: its lists in the `window_s` before the
current one's first), with the lists that earned a click (an event naming the list), in the database, and their
CTRs compared by the always-valid test of `service.experiments.results` (safe to repeat every round). Once each
has `min_lists` lists, a significantly lower CTR sets `reco_bundle_ctr_regression` to 1: the alert
RecsysBundleCTRRegressed (deploy/prometheus/alerts.yml) fires, and the dashboard offers the registry's rollback.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable
from typing import Any

from service.core.metrics import Metrics
from service.experiments.results import ALPHA, always_valid
from service.store import experiments as store
from service.store.records import Records, RecordsUnavailable

log = logging.getLogger(__name__)
WINDOW_S = 86_400.0
LOOK_S = 3600.0  # the always-valid test looks at every hour's end


def compare(engine: Any, current: str, *, min_lists: int, window_s: float = WINDOW_S) -> dict[str, Any]:
    """The guard's verdict (blocking: the database threads). Lists and clicked lists are counted in the database
    per bundle and hour; the always-valid test looks at every hour's end."""
    first, previous = store.bundle_before(engine, current)
    out: dict[str, Any] = {"current": current, "previous": previous, "regression": False}
    if first is None or previous is None:
        out["reason"] = "no lists of both bundles recorded yet"
        return out
    since = first - window_s
    rows = store.clicked_lists_by_bundle(engine, [previous, current], since, LOOK_S)
    lists, clicked = {previous: 0, current: 0}, {previous: 0, current: 0}
    best_ratio = 1.0
    for _, hour in itertools.groupby(rows, key=lambda row: row[1]):  # rows come ordered by hour
        for version, _, n, c in hour:
            lists[version] += n
            clicked[version] += c
        ratio = always_valid(clicked[current], lists[current], clicked[previous], lists[previous])[0]
        best_ratio = max(best_ratio, ratio)
    ctr = {v: clicked[v] / lists[v] if lists[v] else 0.0 for v in (previous, current)}
    p_value = min(1.0, 1.0 / best_ratio)
    _, low, high = always_valid(clicked[current], lists[current], clicked[previous], lists[previous])
    out["bundles"] = {v: {"lists": lists[v], "clicked_lists": clicked[v], "ctr": ctr[v]} for v in (previous, current)}
    out["always_valid_p_value"], out["interval"] = p_value, [low, high]
    if min(lists.values()) < min_lists:
        out["reason"] = f"waiting for {min_lists} lists of each (have {lists[previous]} and {lists[current]})"
        return out
    dropped = ctr[current] < ctr[previous]
    out["regression"] = bool(p_value < ALPHA and dropped)
    out["reason"] = "significantly lower CTR" if out["regression"] else "no significant drop"
    return out


async def compare_bundles(records: Records, current: str, *, min_lists: int) -> dict[str, Any]:
    """`compare` in the database threads; raises RecordsUnavailable."""
    call = functools.partial(compare, records.engine, current, min_lists=min_lists)
    return await records.run(call, timeout_s=30.0)


async def watch(
    records: Records, metrics: Metrics, served: Callable[[], str], *, min_lists: int, every_s: float = 60.0
) -> None:
    """Every `every_s`, the guard's verdict on the bundle served into `reco_bundle_ctr_regression`. Runs until
    cancelled."""
    while True:
        await asyncio.sleep(every_s)
        try:
            verdict = await compare_bundles(records, served(), min_lists=min_lists)
        except RecordsUnavailable:
            continue
        except Exception:  # never end the loop
            log.exception("the post-publish guard failed")
            continue
        metrics.bundle_ctr_regression.set(1 if verdict["regression"] else 0)
        if verdict["regression"]:
            log.warning("bundle %s: live CTR significantly below %s's", verdict["current"], verdict["previous"])
