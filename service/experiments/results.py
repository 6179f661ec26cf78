"""Per-variant results of an experiment, from its impressions and the events attributed to them.

Per variant: lists served, CTR@k (the share of lists with a click on one of their first k items), clicks per
list, like and purchase rates (the share of lists with one), coverage (distinct items shown / catalogue). Each
rate of each variant is compared with the first variant (the control):

- a fixed-horizon two-sided test of the two proportions with its 95 % interval (statsmodels: Wald's test and
  Newcombe's interval), valid when read once, at a sample size fixed in advance;
- an always-valid one (a mixture sequential probability ratio test, Johari, Pekelis & Walsh 2017: a normal
  mixture over the difference, variance `tau2`), which stays valid however often it is read: the dashboard
  refreshes, so `significant` is decided by it. Its p-value is the smallest over the looks at every bucket end.

`series`: per time bucket, each variant's lists and cumulative CTR@k, for the curves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.store.experiments import Shown

ALPHA = 0.05
TAU2 = 0.02**2  # the mixture's variance over the true difference in a rate: effects of a couple of points
RATES = ("ctr", "like_rate", "purchase_rate")


@dataclass
class Tally:
    lists: int = 0
    clicked: int = 0  # lists with a click within the first k
    clicks: int = 0  # clicks within the first k
    liked: int = 0
    purchased: int = 0
    items: set[str] = field(default_factory=set)

    def add(self, shown: Shown, k: int) -> None:
        first = set(shown.items[:k])
        everything = set(shown.items)
        self.lists += 1
        self.items.update(shown.items)
        clicks = sum(1 for item, kind in shown.events if kind == "click" and item in first)
        self.clicks += clicks
        self.clicked += clicks > 0
        self.liked += any(kind == "like" and item in everything for item, kind in shown.events)
        self.purchased += any(kind == "purchase" and item in everything for item, kind in shown.events)

    def absorb(self, other: Tally) -> None:
        """Add `other`'s lists to these."""
        self.lists += other.lists
        self.clicked += other.clicked
        self.clicks += other.clicks
        self.liked += other.liked
        self.purchased += other.purchased
        self.items |= other.items

    def count(self, rate: str) -> int:
        return {"ctr": self.clicked, "like_rate": self.liked, "purchase_rate": self.purchased}[rate]


def always_valid(x1: int, n1: int, x0: int, n0: int, tau2: float = TAU2) -> tuple[float, float, float]:
    """(likelihood ratio, interval low, interval high) of the mixture SPRT for p1 - p0 at ALPHA, by the normal
    approximation; (1, -1, 1) while either arm is empty or has no variance yet."""
    if min(n0, n1) == 0:
        return 1.0, -1.0, 1.0
    p1, p0 = x1 / n1, x0 / n0
    v = p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0
    if v <= 0:
        return 1.0, -1.0, 1.0
    diff = p1 - p0
    ratio = math.sqrt(v / (v + tau2)) * math.exp(min(700.0, diff * diff * tau2 / (2 * v * (v + tau2))))
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / ALPHA) + math.log((v + tau2) / v)))
    return ratio, diff - half, diff + half


def fixed_horizon(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float, float]:
    """(p-value, interval low, interval high) of p1 - p0: statsmodels' Wald test and Newcombe's interval."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    if min(n0, n1) == 0 or (x0 + x1 == 0) or (x0 + x1 == n0 + n1):
        return 1.0, -1.0, 1.0
    test = test_proportions_2indep(x1, n1, x0, n0, method="wald", compare="diff")
    low, high = confint_proportions_2indep(x1, n1, x0, n0, method="newcomb", compare="diff", alpha=ALPHA)
    return float(test.pvalue), float(low), float(high)


def results(
    shown: Sequence[Shown],
    variants: Sequence[str],
    *,
    k: int,
    n_items: int,
    bucket_s: float = 3600.0,
    tau2: float = TAU2,
) -> dict[str, Any]:
    """The experiment's results: per variant its tallies and rates, each compared with `variants[0]`."""
    buckets: dict[int, dict[str, Tally]] = defaultdict(lambda: {v: Tally() for v in variants})
    start = shown[0].created_at if shown else 0.0
    for s in shown:
        if s.variant is not None and s.variant in variants:
            buckets[int((s.created_at - start) // bucket_s)][s.variant].add(s, k)
    # Cumulative tallies at each bucket's end: the curves, and the looks the always-valid p-value minimises over;
    # after the last bucket, the totals.
    totals = {v: Tally() for v in variants}
    series, best_ratio = [], {(v, r): 1.0 for v in variants[1:] for r in RATES}
    control = variants[0] if variants else None
    for b in sorted(buckets):
        point: dict[str, Any] = {"t": start + (b + 1) * bucket_s, "variants": {}}
        for v in variants:
            t = totals[v]
            t.absorb(buckets[b][v])
            point["variants"][v] = {"lists": t.lists, "ctr": t.clicked / t.lists if t.lists else None}
        for v in variants[1:]:
            for rate in RATES:
                c, x = totals[control], totals[v]  # type: ignore[index]
                ratio = always_valid(x.count(rate), x.lists, c.count(rate), c.lists, tau2)[0]
                best_ratio[v, rate] = max(best_ratio[v, rate], ratio)
        series.append(point)
    out: dict[str, Any] = {"k": k, "control": control, "variants": {}, "series": series}
    for v in variants:
        t = totals[v]
        entry: dict[str, Any] = {
            "lists": t.lists,
            "ctr": t.clicked / t.lists if t.lists else None,
            "clicks_per_list": t.clicks / t.lists if t.lists else None,
            "like_rate": t.liked / t.lists if t.lists else None,
            "purchase_rate": t.purchased / t.lists if t.lists else None,
            "coverage": len(t.items) / n_items if n_items else None,
        }
        if v != control:
            c = totals[control]  # type: ignore[index]
            entry["against_control"] = {}
            for rate in RATES:
                x1, x0 = t.count(rate), c.count(rate)
                p_value, low, high = fixed_horizon(x1, t.lists, x0, c.lists)
                _, av_low, av_high = always_valid(x1, t.lists, x0, c.lists, tau2)
                av_p = min(1.0, 1.0 / best_ratio[v, rate])
                entry["against_control"][rate] = {
                    "difference": (x1 / t.lists - x0 / c.lists) if t.lists and c.lists else None,
                    "p_value": p_value,
                    "interval": [low, high],
                    "always_valid_p_value": av_p,
                    "always_valid_interval": [av_low, av_high],
                    "significant": av_p < ALPHA,
                }
        out["variants"][v] = entry
    return out
