"""Overload: at 5 x the normal concurrency, admission control turns the excess away at once (503) and the
accepted requests keep their latency.

    python -m benchmarks.overload [--size 100000] [--concurrency 16] [--max-in-flight 32] [--duration 15]

Serves the synthetic bundle (benchmarks.serve builds it if missing) with RECO_MAX_IN_FLIGHT set, Redis on, and
drives it with wrk at `--concurrency` (normal) and then at 5 x that (overload). Latency of the *accepted*
requests comes from the server's own histogram of 200 responses (reco_http_request_duration_seconds,
interpolated within buckets as Prometheus's histogram_quantile does), so the immediate 503s do not flatter it;
wrk's own figures (all responses) are printed beside. Writes --out/overload.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.request
from typing import Any

from benchmarks.serve import WRK_SCRIPT, Server, load_test_args, serving_bundle, wrk

ROUTE = "/v1/recommendations"


def histogram(url: str, status: str) -> dict[float, float]:
    """Cumulative bucket counts of the route's latency histogram for one status."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[float, float] = {}
    pattern = re.compile(r"reco_http_request_duration_seconds_bucket\{(.*?)\} (\S+)")
    for labels, value in pattern.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("route") == ROUTE and fields.get("status") == status and fields.get("method") == "POST":
            out[float("inf") if fields["le"] == "+Inf" else float(fields["le"])] = float(value)
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """histogram_quantile over the difference of two cumulative snapshots (seconds)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total == 0:
        return float("nan")
    rank, previous_bound, previous_count = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / max(
                count - previous_count, 1e-9
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def phase(server: Server, concurrency: int, duration: int, env: dict[str, str]) -> dict[str, Any]:
    before = histogram(server.url, "200")
    rejected_before = histogram(server.url, "503")
    run = wrk(server.url, ROUTE, WRK_SCRIPT, concurrency, duration, env)
    after, rejected_after = histogram(server.url, "200"), histogram(server.url, "503")
    accepted = after[float("inf")] - before.get(float("inf"), 0.0)
    rejected = rejected_after.get(float("inf"), 0.0) - rejected_before.get(float("inf"), 0.0)
    return {
        "concurrency": concurrency,
        "accepted": accepted,
        "rejected_503": rejected,
        "accepted_per_s": accepted / (run["duration_us"] / 1e6),
        "accepted_p50_ms": quantile(before, after, 0.50) * 1e3,
        "accepted_p99_ms": quantile(before, after, 0.99) * 1e3,
        "rejected_p99_ms": quantile(rejected_before, rejected_after, 0.99) * 1e3 if rejected else None,
        "wrk": run,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15)
    args = load_test_args(parser)
    bundle = serving_bundle(args.size, args.bundles, 6000)
    env = {
        "RECO_REDIS_URL": args.redis_url,
        "RECO_DEV_MODE": "true",
        "RECO_ACCESS_LOG": "false",
        "RECO_MAX_IN_FLIGHT": str(args.max_in_flight),
    }
    server = Server(bundle, env)
    wrk_env = {"BENCH_USERS": str(args.users)}
    try:
        wrk(server.url, ROUTE, WRK_SCRIPT, args.concurrency, 5, wrk_env)  # warm-up, fills the cache
        normal = phase(server, args.concurrency, args.duration, wrk_env)
        # 5 x the normal rate offered: 5 x the connections, each paced so that together they send 5 x what
        # the service answered at normal load (a refused client waits before its next request, as one
        # honouring Retry-After would, instead of re-sending at once).
        offered = 5 * normal["accepted_per_s"]
        connections = 5 * args.concurrency
        paced = wrk_env | {"BENCH_DELAY_MS": str(max(1, round(1000 * connections / offered)))}
        overload = phase(server, connections, args.duration, paced)
        overload["offered_per_s"] = offered
        flood = phase(server, connections, args.duration, wrk_env)  # not paced: every refusal re-sent at once
    finally:
        server.stop()
    ratio = overload["accepted_p99_ms"] / normal["accepted_p99_ms"]
    report = {
        "size": args.size,
        "max_in_flight": args.max_in_flight,
        "normal": normal,
        "overload": overload,
        "flood": flood,
    }
    report["accepted_p99_ratio"] = ratio
    lines = [
        f"### Overload ({args.size:,} items, RECO_MAX_IN_FLIGHT={args.max_in_flight}, {args.duration} s per phase)",
        "",
        "| phase | wrk concurrency | accepted/s | accepted p50 ms | accepted p99 ms | 503s | wrk p99 ms (all) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in (("normal", normal), ("5 x the normal rate, paced", overload), ("flood (5 x connections)", flood)):
        lines.append(
            f"| {name} | {p['concurrency']} | {p['accepted_per_s']:.0f} | {p['accepted_p50_ms']:.1f} "
            f"| {p['accepted_p99_ms']:.1f} | {p['rejected_503']:.0f} | {p['wrk']['p99_ms']:.1f} |"
        )
    flood_ratio = flood["accepted_p99_ms"] / normal["accepted_p99_ms"]
    report["flood_accepted_p99_ratio"] = flood_ratio
    lines += [
        "",
        f"Accepted p99 at 5 x the normal rate ({offered:.0f} req/s offered) / normal: {ratio:.2f} x; "
        f"under the unpaced flood: {flood_ratio:.2f} x.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload.json").write_text(json.dumps(report, indent=2))
    (args.out / "overload.md").write_text(text)


if __name__ == "__main__":
    main()
