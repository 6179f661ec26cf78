"""Event ingestion: `POST /v1/events` latency at a steady rate, with PostgreSQL as the system of record.

    python -m benchmarks.ingest --bundle PATH [--rate 200] [--seconds 20] [--database postgresql+psycopg://...]
    python -m benchmarks.ingest --data-dir ../shared/data/ml-100k   # the ml-100k bundle, built with the CLI

`python -m service` serves the bundle (Redis cache on, a database of the benchmark's own created on the
PostgreSQL server given and dropped afterwards); requests carrying one event each (a click with an event_id, for a
user drawn from 1,000: known users and new ones) are sent at `--rate` per second from a few keep-alive connections,
each on its own schedule. Printed: the achieved rate, latency percentiles, failures, and a check that every
acknowledged event is in the database exactly once, and the share of answers the service itself timed within
its histogram's bounds (what the client's own scheduling adds is not in those). JSON goes to `--out`
(ingest.json).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serve import Server
from service.core.bundle import load_bundle

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def fresh_postgres(server_url: str = POSTGRES) -> Iterator[str]:
    """A database of its own on the PostgreSQL server of `server_url` (dropped afterwards)."""
    name = f"reco_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def paced(url: str, bodies: list[dict[str, Any]], rate: float, connections: int) -> list[tuple[int, float]]:
    """Send `bodies` at `rate` per second overall, spread over `connections` threads (each its own keep-alive
    connection and schedule); per request (status, seconds), measured from its scheduled time."""
    host, port = url.removeprefix("http://").split(":")
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def run(worker: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        for n in range(worker, len(bodies), connections):
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                connection.request("POST", "/v1/events", json.dumps(bodies[n]), {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                status = 0
            mine.append((status, time.monotonic() - max(due, start)))
        connection.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def server_latency(url: str) -> dict[str, float]:
    """The share of `POST /v1/events` answers the service itself timed within each of its histogram's bounds
    (reco_http_request_duration_seconds: from the request's arrival to its answer), for comparison with what the
    client saw (its own scheduling and the network stack are in the client's figures only)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    route = {"method": "POST", "route": "/v1/events", "status": "200"}
    counts = {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "reco_http_request_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket") and route.items() <= sample.labels.items()
    }
    total = counts.get(float("inf"), 0.0)
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1)
    return {f"within_{b * 1000:g}_ms": counts[b] / total for b in bounds if b in counts and total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="a bundle directory (or its `current` link)")
    source.add_argument("--data-dir", type=Path, help="MovieLens data: a bundle is built from it with the CLI")
    parser.add_argument("--bundles", type=Path, default=Path("benchmarks/.bundles/redis-hang"))
    parser.add_argument("--rate", type=float, default=200.0, help="requests (one event each) per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="service processes (RECO_WORKERS)")
    parser.add_argument("--database", default=POSTGRES, help="a PostgreSQL server URL (a database is made on it)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")
    if args.bundle is None:  # the ml-100k bundle, as benchmarks.redis_hang builds it (and shares it)
        args.bundle = args.bundles / "current"
        if not args.bundle.exists():
            from benchmarks.api_quality import build_with_cli

            build_with_cli(args.data_dir, args.bundles, "default", seed=0)
    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(0)
    users = [*bundle.user_ids[:500], *(f"new-{n}" for n in range(500))]
    n = int(args.rate * args.seconds)
    bodies = [
        {
            "events": [
                {
                    "user_id": users[int(rng.integers(len(users)))],
                    "item_id": bundle.item_ids[int(rng.integers(len(bundle.item_ids)))],
                    "event_type": "click",
                    "event_id": f"bench-{i}",
                }
            ]
        }
        for i in range(n)
    ]
    with fresh_postgres(args.database) as database:
        env = {"RECO_DATABASE_URL": database, "RECO_REDIS_URL": args.redis_url, "RECO_DEV_MODE": "true"}
        env["RECO_WORKERS"] = str(args.workers)
        server = Server(args.bundle.resolve(), env)
        try:
            paced(server.url, bodies[:50], args.rate, args.connections)  # warm-up (their events are stored too)
            t0 = time.monotonic()
            results = paced(server.url, bodies[50:], args.rate, args.connections)
            elapsed = time.monotonic() - t0
            served = server_latency(server.url)
        finally:
            server.stop()
        engine = sa.create_engine(database)
        with engine.connect() as c:
            stored = c.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM events")).one()
        engine.dispose()
    ok = [s for status, s in results if status == 200]
    ms = np.array(ok) * 1000
    report = {
        "command": f"python -m benchmarks.ingest {given}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "requests": len(results),
        "failed": len(results) - len(ok),
        "achieved_per_s": len(results) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "events_stored": int(stored[0]),
        "distinct_event_ids": int(stored[1]),
        "events_sent": n,
        "server_timed": served,
    }
    print(json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
