"""Soak: steady traffic for a long time; resident memory growth and errors.

    python -m benchmarks.soak [--size 100000] [--minutes 10] [--concurrency 8]

Serves the synthetic bundle of `--size` items (built by benchmarks.serve if missing) with Redis on, warms it up
for 30 s, then drives `POST /v1/recommendations` with wrk for `--minutes` in one-minute runs, reading the
server's resident memory after each. Events are posted for some users each minute as well, so the event store
and the per-event cache keys grow the way they do in production. Writes --out/soak.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

from benchmarks.serve import WRK_SCRIPT, Server, load_test_args, serving_bundle, wrk


def post_events(url: str, minute: int, n_users: int) -> None:
    events = [{"user_id": str(1 + (minute * 97 + u) % n_users), "item_id": str(1 + u)} for u in range(50)]
    request = urllib.request.Request(
        url + "/v1/events", json.dumps({"events": events}).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    args = load_test_args(parser)
    bundle = serving_bundle(args.size, args.bundles, 6000)
    env = {"RECO_REDIS_URL": args.redis_url, "RECO_DEV_MODE": "true", "RECO_ACCESS_LOG": "false"}
    server = Server(bundle, env)
    wrk_env = {"BENCH_USERS": str(args.users)}
    minutes: list[dict[str, Any]] = []
    try:
        wrk(server.url, "/v1/recommendations", WRK_SCRIPT, args.concurrency, 30, wrk_env)  # warm-up
        start_rss = server.rss_mib()
        for minute in range(args.minutes):
            post_events(server.url, minute, args.users)
            run = wrk(server.url, "/v1/recommendations", WRK_SCRIPT, args.concurrency, 60, wrk_env)
            run["rss_mib"] = server.rss_mib()
            minutes.append(run)
            print(
                f"minute {minute + 1}: {run['rps']:.0f} req/s, p99 {run['p99_ms']:.1f} ms, errors {run['errors']}, "
                f"RSS {run['rss_mib']:.1f} MiB",
                flush=True,
            )
    finally:
        server.stop()
    end_rss = minutes[-1]["rss_mib"]
    report = {
        "size": args.size,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": sum(m["requests"] for m in minutes),
        "errors": sum(m["errors"] for m in minutes),
        "rss_after_warmup_mib": start_rss,
        "rss_end_mib": end_rss,
        "rss_growth": end_rss / start_rss - 1,
        "per_minute": minutes,
    }
    text = (
        f"### Soak ({args.size:,} items, {args.minutes} min at concurrency {args.concurrency}, Redis on, events "
        f"posted every minute)\n\n{report['requests']:,} requests, {report['errors']} errors; resident memory "
        f"{start_rss:.1f} MiB after warm-up -> {end_rss:.1f} MiB at the end ({report['rss_growth']:+.2%}); "
        f"throughput per minute {min(m['rps'] for m in minutes):.0f}-{max(m['rps'] for m in minutes):.0f} req/s, "
        f"p99 {min(m['p99_ms'] for m in minutes):.1f}-{max(m['p99_ms'] for m in minutes):.1f} ms.\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    (args.out / "soak.md").write_text(text)


if __name__ == "__main__":
    main()
