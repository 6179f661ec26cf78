"""Items added live: `PUT /v1/items/{id}` latency and memory at large catalogues, and how soon another replica
serves the item.

    python -m benchmarks.live_items [--sizes 100000 1000000] [--puts 1000] [--database postgresql+psycopg://...]

Per catalogue size: a synthetic bundle (benchmarks.serve builds it once under --bundles), two `python -m service`
processes (two replicas: one database of the benchmark's own on the PostgreSQL server given, no Redis). `--puts`
items are PUT one after another on replica A: latency per PUT (p50, p99, max: the max includes the catalogue's
one growth) and A's resident memory before and after. Then `--probes` more, each followed by polling replica B's
`GET /v1/items/{id}/similar` every 20 ms until it answers 200 (B has the item in its catalogue and index: it can
recommend it): the time from A's 200 to B's. JSON goes to `--out` (live_items.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ingest import POSTGRES, fresh_postgres
from benchmarks.serve import Server, serving_bundle

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Thriller"]


def put(connection: http.client.HTTPConnection, item_id: str, n: int) -> tuple[int, float]:
    body = {
        "title": f"Live item {n}",
        "genres": [GENRES[n % len(GENRES)], GENRES[(n * 7) % len(GENRES)]],
        "year": 1990 + n % 30,
        "description": f"a benchmark item, number {n}",
    }
    t0 = time.perf_counter()
    connection.request("PUT", f"/v1/items/{item_id}", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status, time.perf_counter() - t0


def found(connection: http.client.HTTPConnection, item_id: str) -> bool:
    connection.request("GET", f"/v1/items/{item_id}/similar?k=1")
    response = connection.getresponse()
    response.read()
    return response.status == 200


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def measure(bundle: Path, database: str, puts: int, probes: int, sync_s: float) -> dict[str, Any]:
    env = {"RECO_DATABASE_URL": database, "RECO_DEV_MODE": "true"}  # no Redis: the in-process caches
    env["RECO_LIVE_ITEMS_SYNC_S"] = str(sync_s)
    a = Server(bundle, env)
    b = Server(bundle, env)
    try:
        to_a, to_b = connect(a.url), connect(b.url)
        rss_loaded = a.rss_mib()
        # The first PUT makes the catalogue's spare room (one copy of its arrays) and warms the encoder up.
        _, first = put(to_a, "warm-up", 0)
        rss_before = a.rss_mib()
        seconds, failed = [], 0
        for n in range(puts):
            status, s = put(to_a, f"live-{n}", n)
            failed += status != 200
            seconds.append(s)
        rss_after = a.rss_mib()
        lags, rng = [], np.random.default_rng(0)
        for n in range(probes):
            item_id = f"probe-{n}"
            status, _ = put(to_a, item_id, puts + n)
            failed += status != 200
            acknowledged = time.perf_counter()
            while not found(to_b, item_id):
                if time.perf_counter() - acknowledged > 30:
                    raise RuntimeError(f"replica B never served {item_id}")
                time.sleep(0.02)
            lags.append(time.perf_counter() - acknowledged)
            time.sleep(float(rng.uniform(0, sync_s)))  # the next probe at a random point of B's polling cycle
        ms, lag_ms = np.array(seconds) * 1000, np.array(lags) * 1000
        return {
            "puts": puts,
            "failed": failed,
            "first_put_ms": first * 1000,
            "rss_loaded_mib": rss_loaded,
            "put_p50_ms": float(np.percentile(ms, 50)),
            "put_p99_ms": float(np.percentile(ms, 99)),
            "put_max_ms": float(ms.max()),
            "rss_before_mib": rss_before,
            "rss_after_mib": rss_after,
            "other_replica_p50_ms": float(np.percentile(lag_ms, 50)),
            "other_replica_max_ms": float(lag_ms.max()),
        }
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--sync-s", type=float, default=1.0, help="RECO_LIVE_ITEMS_SYNC_S of both replicas")
    parser.add_argument("--n-users", type=int, default=6000, help="users of the synthetic bundles")
    parser.add_argument("--database", default=POSTGRES, help="a PostgreSQL server URL (a database is made on it)")
    parser.add_argument("--bundles", type=Path, default=Path("benchmarks/.bundles"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.live_items "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out"
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "sizes": {},
    }
    for n_items in args.sizes:
        bundle = serving_bundle(n_items, args.bundles, args.n_users)
        with fresh_postgres(args.database) as database:
            row = measure(bundle.resolve(), database, args.puts, args.probes, args.sync_s)
        report["sizes"][str(n_items)] = row
        print(
            f"{n_items:>9,} items: PUT p50 {row['put_p50_ms']:.1f} ms, p99 {row['put_p99_ms']:.1f} ms, max "
            f"{row['put_max_ms']:.0f} ms ({row['failed']} failed; the first {row['first_put_ms']:.0f} ms); RSS "
            f"{row['rss_loaded_mib']:.0f} loaded, {row['rss_before_mib']:.0f} after the first PUT -> "
            f"{row['rss_after_mib']:.0f} MiB after {row['puts']} PUTs; on the other replica after "
            f"{row['other_replica_p50_ms']:.0f} ms (p50), {row['other_replica_max_ms']:.0f} ms (max)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live_items.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
