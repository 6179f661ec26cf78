"""Online experiments, simulated: the service's experiments, impressions, attribution and exploration driven by
simulated users whose choices come from their real later ratings.

    python -m benchmarks.online --data-dir ../shared/data/ml-100k [--aa-runs 100] [--bundles DIR]

Protocol. ml-100k is split by time per user as in `benchmarks.api_quality` (the earliest 80 % of each user's
ratings train, the latest 20 % are the user's future), and a random 10 % of the items is taken out of training
entirely: they are the new items, added live through `PUT /v1/items` when the simulation starts. The bundle is
built by the CLI and served by `python -m service` (its own SQLite system of record), asked over HTTP.

A session is one user asking `POST /v1/recommendations` (k=10) and clicking: an item the user rated later is
clicked with a probability by its rating (5: 0.5, 4: 0.3, 3: 0.1, 1-2: 0.02), any other item with 0.005, each
times a position bias 1 / log2(position + 2). Clicks go back as `POST /v1/events` naming the list's request_id;
a clicked item joins the user's history (the service never shows it again). A simulated day is every test user's
session once (943 sessions on ml-100k), users in random order.

1. **Service against most popular**: an experiment, half the users each; after every 100 sessions its results
   are read (the always-valid test, safe to read that often), until the service is significantly better.
2. **A/A**: `--aa-runs` experiments with two identical variants, each over `--aa-sessions` sessions; how many end
   significant (the false positive rate; the target: at most 5 %).
3. **Exploration**: the service without and with exploration (`--exploration` of the slots), half the users each,
   for `--exploration-days`; per arm, the sessions until each new item's first click, and the CTR.

Writes benchmarks/results/online.{md,json} and a plot of the curves (online.png).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.api_quality import build_with_cli, make_split, write_copy
from benchmarks.item_quality import item_record
from benchmarks.serve import Server
from model_export.data import Dataset, Interactions, load_movielens, temporal_split
from service.experiments.design import Experiment, Variant
from service.experiments.results import fixed_horizon

log = logging.getLogger("online")
K = 10
CLICK = {5: 0.5, 4: 0.3, 3: 0.1, 2: 0.02, 1: 0.02}  # by the rating the user gave the item later
NOISE = 0.005  # an item the user never rated
RESULTS = Path(__file__).resolve().parent / "results"
FLUSH_S = 1.5  # the service writes impressions every second


def server_env(database: Path) -> dict[str, str]:
    """`python -m service`'s settings here: dev mode, quiet, its own SQLite system of record, following experiments
    every second and no bundle registry."""
    return {
        "RECO_DEV_MODE": "true",
        "RECO_ACCESS_LOG": "false",
        "RECO_LOG_LEVEL": "warning",
        "RECO_DATABASE_URL": f"sqlite:///{database}",
        "RECO_EXPERIMENTS_SYNC_S": "1",
        "RECO_BUNDLE_SYNC_S": "0",
    }


def call(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


class Population:
    """The simulated users: each one's later ratings decide what they click."""

    def __init__(self, dataset: Dataset, future: Any) -> None:
        self.prefs: dict[str, dict[str, int]] = {}
        for u, i, r in zip(future.user, future.item, future.rating, strict=True):
            self.prefs.setdefault(dataset.user_ids[u], {})[dataset.item_ids[i]] = int(r)
        self.users = sorted(self.prefs)

    def clicks(self, user_id: str, items: list[str], rng: np.random.Generator) -> list[str]:
        prefs = self.prefs[user_id]
        out = []
        for position, item in enumerate(items):
            rating = prefs.get(item.removeprefix("new-"))
            p = (CLICK[rating] if rating else NOISE) / math.log2(position + 2)
            if rng.random() < p:
                out.append(item)
        return out


def session(url: str, population: Population, user_id: str, seed: int) -> tuple[list[str], list[str]]:
    """One session: a list, the user's clicks sent back attributed to it. (shown, clicked)"""
    answer = call("POST", url + "/v1/recommendations", {"user_id": user_id, "k": K})
    shown = [it["item_id"] for it in answer["items"]]
    clicked = population.clicks(user_id, shown, np.random.default_rng(seed))
    if clicked:
        events = [
            {"user_id": user_id, "item_id": i, "event_type": "click", "request_id": answer["request_id"]}
            for i in clicked
        ]
        call("POST", url + "/v1/events", {"events": events})
    return shown, clicked


def sessions(
    url: str, population: Population, users: list[str], seed: int, pool: ThreadPoolExecutor
) -> list[tuple[str, list[str], list[str]]]:
    """Sessions for `users` (in order, several at once): (user, shown, clicked) each."""
    done = pool.map(lambda j: session(url, population, users[j], seed * 1_000_003 + j), range(len(users)))
    return [(u, s, c) for u, (s, c) in zip(users, done, strict=True)]


def day(population: Population, rng: np.random.Generator) -> list[str]:
    return [population.users[j] for j in rng.permutation(len(population.users))]


def start(url: str, name: str, variants: list[dict[str, Any]]) -> None:
    call("POST", url + "/admin/experiments", {"name": name, "variants": variants})
    call("POST", url + f"/admin/experiments/{name}/start")


def stop(url: str, name: str, bucket_s: float = 3600.0) -> dict[str, Any]:
    call("POST", url + f"/admin/experiments/{name}/stop")
    return results(url, name, bucket_s)


def results(url: str, name: str, bucket_s: float = 3600.0) -> dict[str, Any]:
    time.sleep(FLUSH_S)  # the lists just served are recorded off the response path
    query = urllib.parse.urlencode({"k": K, "bucket_s": bucket_s})
    found: dict[str, Any] = call("GET", url + f"/admin/experiments/{name}/results?{query}")
    return found


def service_against_popular(
    url: str, population: Population, pool: ThreadPoolExecutor, seed: int, max_days: int, step: int = 100
) -> dict[str, Any]:
    name = f"service-vs-popular-{seed}"
    start(url, name, [{"name": "popular", "share": 0.5, "ordering": "popular"}, {"name": "service", "share": 0.5}])
    rng = np.random.default_rng(seed)
    queue = [u for _ in range(max_days) for u in day(population, rng)]
    curve, detected = [], None
    for at in range(0, len(queue), step):
        sessions(url, population, queue[at : at + step], seed + at, pool)
        found = results(url, name)
        versus = found["variants"]["service"]["against_control"]["ctr"]
        v = found["variants"]
        curve.append(
            {
                "sessions": at + step,
                "popular": v["popular"]["ctr"],
                "service": v["service"]["ctr"],
                "p": versus["always_valid_p_value"],
            }
        )
        if detected is None and versus["significant"] and versus["difference"] > 0:
            detected = at + step
            break
    final = stop(url, name)
    return {
        "detected_after_sessions": detected,
        "sessions_per_day": len(population.users),
        "curve": curve,
        "final": final,
    }


def aa(
    url: str, population: Population, pool: ThreadPoolExecutor, runs: int, per_run: int, seed: int
) -> dict[str, Any]:
    significant, p_values = 0, []
    rng = np.random.default_rng(seed)
    for run in range(runs):
        name = f"aa-{seed}-{run}"
        start(url, name, [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}])
        users = [population.users[j] for j in rng.integers(0, len(population.users), per_run)]
        sessions(url, population, users, seed * 7919 + run, pool)
        versus = stop(url, name)["variants"]["b"]["against_control"]["ctr"]
        significant += bool(versus["significant"])
        p_values.append({"always_valid": versus["always_valid_p_value"], "fixed": versus["p_value"]})
        log.info("A/A %d: significant so far %d", run + 1, significant)
    fixed = sum(p["fixed"] < 0.05 for p in p_values)
    return {
        "runs": runs,
        "sessions_per_run": per_run,
        "significant": significant,
        "share": significant / runs if runs else None,
        "fixed_horizon_significant": fixed,
        "p_values": p_values,
    }


def exploration(
    url: str, population: Population, pool: ThreadPoolExecutor, new_items: list[str], share: float, days: int, seed: int
) -> dict[str, Any]:
    name = f"exploration-{seed}"
    start(url, name, [{"name": "greedy", "share": 0.5}, {"name": "explore", "share": 0.5, "exploration": share}])
    experiment = call("GET", url + "/admin/experiments")[0]
    assert experiment["name"] == name
    rng = np.random.default_rng(seed)
    queue = [u for _ in range(days) for u in day(population, rng)]
    new = set(new_items)
    first_click: dict[str, dict[str, int]] = {"greedy": {}, "explore": {}}
    clicks: dict[str, list[tuple[str, str]]] = {"greedy": [], "explore": []}  # (user, item): a retrain's new data
    shown_new: dict[str, int] = {"greedy": 0, "explore": 0}
    sessions_of: dict[str, int] = {"greedy": 0, "explore": 0}
    split = Experiment(name, (Variant("greedy", 0.5), Variant("explore", 0.5, exploration=share)))
    curve = []
    step = 100
    for at in range(0, len(queue), step):
        for user, shown, clicked in sessions(url, population, queue[at : at + step], seed + at, pool):
            arm = split.assign(user).name
            sessions_of[arm] += 1
            shown_new[arm] += sum(i in new for i in shown)
            clicks[arm] += [(user, item) for item in clicked]
            for item in clicked:
                if item in new and item not in first_click[arm]:
                    first_click[arm][item] = sessions_of[arm]
        curve.append({"sessions": at + step, **{arm: len(first_click[arm]) for arm in first_click}})
    final = stop(url, name)
    return {
        "share": share,
        "days": days,
        "new_items": len(new),
        "new_items_clicked": {arm: len(v) for arm, v in first_click.items()},
        "median_sessions_to_first_click": {
            arm: float(np.median(list(v.values()))) if v else None for arm, v in first_click.items()
        },
        # Every new item, one never clicked counted at the arm's last session: lower is sooner.
        "mean_sessions_to_first_click_censored": {
            arm: (sum(v.values()) + (len(new) - len(v)) * sessions_of[arm]) / len(new) for arm, v in first_click.items()
        },
        "new_items_shown_per_list": {arm: shown_new[arm] / max(1, sessions_of[arm]) for arm in shown_new},
        "curve": curve,
        "final": final,
        "clicks": clicks,
    }


def retrain_worlds(
    dataset: Dataset,
    train: Any,
    population: Population,
    clicks: dict[str, list[tuple[str, str]]],
    share: float,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    """Each arm of the exploration experiment as its own world: its bundle retrained on the training part plus
    the clicks its own lists earned (the new items now in the catalogue), then its users served by it for
    `--after-days`, the explore world still exploring. CTR@10 of the two worlds after the retrain, compared."""
    user_index = {u: j for j, u in enumerate(dataset.user_ids)}
    item_index = {i: j for j, i in enumerate(dataset.item_ids)}
    start_ts = int(train.timestamp.max()) + 1
    out: dict[str, Any] = {"share": share, "days": args.after_days, "worlds": {}}
    tallies = {}
    for arm, arm_clicks in clicks.items():
        users = np.array([user_index[u] for u, _ in arm_clicks], dtype=np.int64)
        items = np.array([item_index[i.removeprefix("new-")] for _, i in arm_clicks], dtype=np.int64)
        more = Interactions(
            users, items, np.full(len(users), 4.0, np.float32), start_ts + np.arange(len(users), dtype=np.int64)
        )
        combined = Interactions(*(np.concatenate([a, b]) for a, b in zip(astuple(train), astuple(more), strict=True)))
        copy, bundles = work / f"data-{arm}", work / f"bundles-{arm}"
        write_copy(dataset, combined, args.data_dir, "same", copy)
        t0 = time.perf_counter()
        build_with_cli(copy, bundles, args.preset, args.seed)
        build_s = time.perf_counter() - t0
        server = Server(bundles / "current", server_env(work / f"reco-{arm}.sqlite3"))
        try:
            if arm == "explore":  # every user of this world explores: two identical exploring variants
                both = [{"name": n, "share": 0.5, "exploration": share} for n in ("explore-a", "explore-b")]
                start(server.url, "world-explore", both)
            split = Experiment(f"exploration-{args.seed + 1}", (Variant("greedy", 0.5), Variant("explore", 0.5)))
            arm_users = [u for u in population.users if split.assign(u).name == arm]
            rng = np.random.default_rng(args.seed + 3)
            queue = [arm_users[j] for _ in range(args.after_days) for j in rng.permutation(len(arm_users))]
            with ThreadPoolExecutor(args.threads) as pool:
                done = sessions(server.url, population, queue, args.seed + 4, pool)
        finally:
            server.stop()
        clicked = sum(bool(c) for _, _, c in done)
        tallies[arm] = (clicked, len(done))
        out["worlds"][arm] = {
            "build_s": build_s,
            "clicks_trained": len(arm_clicks),
            "lists": len(done),
            "ctr": clicked / len(done),
        }
    (x1, n1), (x0, n0) = tallies["explore"], tallies["greedy"]
    p_value, low, high = fixed_horizon(x1, n1, x0, n0)
    out["explore_vs_greedy"] = {"difference": x1 / n1 - x0 / n0, "p_value": p_value, "interval": [low, high]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--bundles", type=Path, help="where the bundle is built (kept); one already there is served")
    parser.add_argument("--aa-runs", type=int, default=100)
    parser.add_argument("--aa-sessions", type=int, default=500)
    parser.add_argument("--max-days", type=int, default=3)
    parser.add_argument("--exploration", type=float, default=0.1)
    parser.add_argument("--exploration-days", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--retrain", action="store_true", help="then retrain each exploration arm on its own clicks and compare"
    )
    parser.add_argument("--after-days", type=int, default=1, help="days served after the retrain")
    parser.add_argument("--skip", nargs="*", default=[], choices=["popular", "aa"], help="parts left out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="online")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    dataset = load_movielens(args.data_dir)
    split = make_split(dataset)
    rng = np.random.default_rng(args.seed)
    cold = np.sort(rng.choice(dataset.n_items, size=round(0.1 * dataset.n_items), replace=False))
    train = split.train.take(np.flatnonzero(~np.isin(split.train.item, cold)))
    future = temporal_split(dataset.interactions, 0.2)[1]
    population = Population(dataset, future)
    work = Path(tempfile.mkdtemp(prefix="online-"))
    bundles = args.bundles or work / "bundles"
    t0 = time.perf_counter()
    if not (bundles / "current").exists():
        write_copy(dataset, train, args.data_dir, "same", work / "data", drop_items=cold)
        build_with_cli(work / "data", bundles, args.preset, args.seed)
    build_s = time.perf_counter() - t0
    server = Server(bundles / "current", server_env(work / "reco.sqlite3"))
    report: dict[str, Any] = {
        "meta": {
            "dataset": dataset.name,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "build_s": build_s,
            "preset": args.preset,
            "command": "python -m benchmarks.online " + " ".join(sys.argv[1:]),
            "users": len(population.users),
            "new_items": len(cold),
            "click_model": {"by_rating": CLICK, "other": NOISE, "position_bias": "1/log2(position+2)"},
        }
    }
    try:
        new_ids = []
        for i in cold:  # the new items, added live (their ids kept apart from the trained ones')
            item_id = f"new-{dataset.item_ids[i]}"
            call("PUT", server.url + f"/v1/items/{item_id}", item_record(dataset, int(i)))
            new_ids.append(item_id)
        with ThreadPoolExecutor(args.threads) as pool:
            if "popular" not in args.skip:
                t = time.perf_counter()
                found = service_against_popular(server.url, population, pool, args.seed, args.max_days)
                report["service_vs_popular"] = found | {"seconds": time.perf_counter() - t}
                log.info("service vs popular: detected after %s sessions", found["detected_after_sessions"])
            t = time.perf_counter()
            report["exploration"] = exploration(
                server.url, population, pool, new_ids, args.exploration, args.exploration_days, args.seed + 1
            )
            report["exploration"]["seconds"] = time.perf_counter() - t
            log.info("exploration: %s", report["exploration"]["new_items_clicked"])
            if "aa" not in args.skip:
                t = time.perf_counter()
                report["aa"] = aa(server.url, population, pool, args.aa_runs, args.aa_sessions, args.seed + 2)
                report["aa"]["seconds"] = time.perf_counter() - t
    finally:
        server.stop()
    try:
        clicks = report["exploration"].pop("clicks")
        if args.retrain:
            report["retrain"] = retrain_worlds(dataset, train, population, clicks, args.exploration, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    plot(report, args.out / f"{args.name}.png")
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        f"# Online experiments, simulated ({m['dataset']}, {m['date']})",
        "",
        f"`{m['command']}`; {m['users']} simulated users, {m['new_items']} new items added live; "
        f"preset {m['preset']}; {m['machine']['platform']}.",
        "",
    ]
    if "service_vs_popular" in report:
        vp = report["service_vs_popular"]
        final = vp["final"]["variants"]
        versus = final["service"]["against_control"]["ctr"]
        detected = vp["detected_after_sessions"]
        lines += [
            "## Service against most popular",
            f"- Detected as better after **{detected} sessions** ({detected / vp['sessions_per_day']:.2f} simulated "
            "days), by the always-valid test read every 100 sessions"
            if detected
            else "- **Not detected** within the sessions run",
            f"- CTR@{K}: service {final['service']['ctr']:.3f}, popular {final['popular']['ctr']:.3f} "
            f"({final['service']['lists']} and {final['popular']['lists']} lists); difference "
            f"{versus['difference']:+.3f}, always-valid p {versus['always_valid_p_value']:.2g}, fixed-horizon 95 % "
            f"interval [{versus['interval'][0]:+.3f}, {versus['interval'][1]:+.3f}]",
            "",
        ]
    if "aa" in report:
        a = report["aa"]
        lines += [
            "## A/A",
            f"- {a['runs']} runs of {a['sessions_per_run']} sessions: **{a['significant']} significant** "
            f"({a['share']:.0%}) by the always-valid test (valid at every look); {a['fixed_horizon_significant']} "
            "by the fixed-horizon test at 5 %, read once at the end.",
            "",
        ]
    ex = report["exploration"]
    exf = ex["final"]["variants"]
    lines += [
        f"## Exploration ({ex['share']:.0%} of slots, {ex['days']} simulated days)",
        "| arm | new items clicked | median sessions to a clicked new item's first click | mean sessions to a new "
        "item's first click (never: the last session) | new items shown per list | CTR@10 | lists |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ("greedy", "explore"):
        median = ex["median_sessions_to_first_click"][arm]
        lines.append(
            f"| {arm} | {ex['new_items_clicked'][arm]} / {ex['new_items']} | "
            f"{median if median is not None else '-'} | {ex['mean_sessions_to_first_click_censored'][arm]:.0f} | "
            f"{ex['new_items_shown_per_list'][arm]:.2f} | "
            f"{exf[arm]['ctr']:.3f} | {exf[arm]['lists']} |"
        )
    test = exf["explore"]["against_control"]["ctr"]
    lines += [
        "",
        f"Exploration against none, CTR@10: {test['difference']:+.3f} (95 % interval "
        f"[{test['interval'][0]:+.3f}, {test['interval'][1]:+.3f}], "
        f"always-valid p {test['always_valid_p_value']:.2g}).",
        "",
    ]
    if "retrain" in report:
        r = report["retrain"]
        w = r["worlds"]
        d = r["explore_vs_greedy"]
        lines += [
            f"## After a retrain ({r['days']} simulated day per world)",
            "Each arm retrained on the training part plus the clicks its own lists earned, then serving its own "
            "users (the explore world still exploring):",
            "",
            "| world | clicks added | build s | lists | CTR@10 |",
            "|---|---|---|---|---|",
            *(
                f"| {arm} | {w[arm]['clicks_trained']} | {w[arm]['build_s']:.0f} | {w[arm]['lists']} | "
                f"{w[arm]['ctr']:.3f} |"
                for arm in ("greedy", "explore")
            ),
            "",
            f"Explore against greedy after the retrain: {d['difference']:+.3f} (95 % interval "
            f"[{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}], p {d['p_value']:.2g}).",
            "",
        ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    curve = report.get("service_vs_popular", {}).get("curve", [])
    x = [c["sessions"] for c in curve]
    for arm in ("service", "popular"):
        left.plot(x, [c[arm] for c in curve], label=arm)
    left.set(xlabel="sessions", ylabel=f"cumulative CTR@{K}", title="Service against most popular")
    left.legend()
    curve = report["exploration"]["curve"]
    x = [c["sessions"] for c in curve]
    for arm in ("greedy", "explore"):
        right.plot(x, [c[arm] for c in curve], label=arm)
    right.set(xlabel="sessions (both arms)", ylabel="new items with a click", title="Exploration")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
