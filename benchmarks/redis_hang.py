"""Redis hung under steady load: the service's latency before, during and after a SIGSTOPped Redis.

    python -m benchmarks.redis_hang --bundle PATH [--concurrency 8] [--normal 10] [--paused 10] [--resumed 5]
    python -m benchmarks.redis_hang --data-dir ../shared/data/ml-100k   # builds the ml-100k bundle with the CLI

`python -m service` serves the bundle with a redis-server of the benchmark's own (the embedding cache and the
event store in it, every timeout and breaker setting at its default), driven by `--concurrency` keep-alive
connections sending `POST /v1/recommendations` back to back for known users. Redis is then SIGSTOPped (hung:
connections open, no answers) for `--paused` seconds and SIGCONTed. Printed per phase: requests, failed ones,
p50/p99/max latency, and what the service's metrics counted (cache errors and bypasses, event reads failed and
skipped). JSON goes to `--out` (redis_hang[-<name>].json). `tests/service/test_redis_faults.py` runs the same phases on
the test bundle and asserts the bounds (no failed request, fault p99 <= 2 x normal p99).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve import Server, free_port
from service.core.bundle import load_bundle

COUNTED = {
    "cache_error": ("reco_cache_requests_total", 'result="error"'),
    "cache_bypass": ("reco_cache_requests_total", 'result="bypass"'),
    "cache_hit": ("reco_cache_requests_total", 'result="hit"'),
    "event_read_error": ("reco_event_store_errors_total", 'op="read"'),
    "event_read_bypass": ("reco_event_store_errors_total", 'op="read_bypass"'),
}


def start_redis(port: int, workdir: Path, *options: str) -> subprocess.Popen[bytes]:
    """A redis-server on `port` keeping nothing on disk, once it accepts connections; `options` are more of its
    command-line options."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(workdir), *options], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def counters(url: str) -> dict[str, float]:
    """The service's fault counters (COUNTED) from its /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name, (metric, label) in COUNTED.items():
        found = re.search(rf"^{metric}\{{{label}\}} (\S+)$", text, re.MULTILINE)
        out[name] = float(found.group(1)) if found else 0.0
    return out


class SteadyLoad:
    """`concurrency` threads, each a keep-alive connection sending requests back to back; every result is
    (sent at, status, seconds). A failed connection counts as status 0 and is opened again."""

    def __init__(self, url: str, concurrency: int, users: list[str], k: int = 10) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.users = users
        self.k = k
        self.results: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(concurrency)]

    def _run(self, worker: int) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        rng = np.random.default_rng(worker)
        headers = {"Content-Type": "application/json"}
        while not self._stop.is_set():
            body = json.dumps({"user_id": self.users[rng.integers(len(self.users))], "k": self.k})
            t0 = time.monotonic()
            try:
                connection.request("POST", "/v1/recommendations", body, headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                status = 0
            self.results.append((t0, status, time.monotonic() - t0))
        connection.close()

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def run_phases(
    url: str, load: SteadyLoad, phases: list[tuple[str, float, Callable[[], None] | None]]
) -> list[dict[str, Any]]:
    """Each phase: its action at its start (e.g. SIGSTOP), then `seconds` of the load; the requests *sent* in
    a phase are its own. Per phase: requests, failed, latency percentiles (ms), counter increases."""
    marks: list[tuple[str, float, dict[str, float]]] = []
    for name, seconds, action in phases:
        if action is not None:
            action()
        marks.append((name, time.monotonic(), counters(url)))
        time.sleep(seconds)
    end, after = time.monotonic(), counters(url)
    out = []
    for n, (name, start, before) in enumerate(marks):
        stop, later = (marks[n + 1][1], marks[n + 1][2]) if n + 1 < len(marks) else (end, after)
        rows = [(status, s) for at, status, s in list(load.results) if start <= at < stop]
        ms = np.array([s for _, s in rows]) * 1000
        out.append(
            {
                "phase": name,
                "requests": len(rows),
                "failed": sum(status != 200 for status, _ in rows),
                "req_per_s": len(rows) / (stop - start),
                "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
                "max_ms": float(ms.max()) if len(ms) else None,
                **{k: later[k] - before[k] for k in COUNTED},
            }
        )
    return out


def hang(
    bundle: Path,
    users: list[str],
    *,
    concurrency: int,
    normal_s: float,
    paused_s: float,
    resumed_s: float,
    warmup_s: float = 2.0,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The phases normal, paused (Redis SIGSTOPped), resumed against a fresh service and Redis."""
    with tempfile.TemporaryDirectory(prefix="reco-redis-hang-") as workdir:
        port = free_port()
        redis_process = start_redis(port, Path(workdir))
        server = None
        try:
            # Dev mode: no tokens to send (the routes' checks are the same either way).
            served = {"RECO_REDIS_URL": f"redis://127.0.0.1:{port}/0", "RECO_DEV_MODE": "true"}
            served["RECO_DATABASE_URL"] = f"sqlite:///{workdir}/reco.sqlite3"  # a system of record of its own
            server = Server(bundle, served | (env or {}))
            with SteadyLoad(server.url, concurrency, users) as load:
                time.sleep(warmup_s)  # the users' embeddings reach Redis
                phases: list[tuple[str, float, Callable[[], None] | None]] = [
                    ("normal", normal_s, None),
                    ("paused", paused_s, lambda: redis_process.send_signal(signal.SIGSTOP)),
                    ("resumed", resumed_s, lambda: redis_process.send_signal(signal.SIGCONT)),
                ]
                return run_phases(server.url, load, phases)
        finally:
            if server is not None:
                server.stop()
            redis_process.send_signal(signal.SIGCONT)
            redis_process.kill()
            redis_process.wait()


def known_users(bundle: Path, n: int) -> list[str]:
    return [str(u) for u in load_bundle(bundle).user_ids[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, help="a bundle directory (or its `current` link)")
    source.add_argument("--data-dir", type=Path, help="MovieLens data: a bundle is built from it with the CLI")
    parser.add_argument("--bundles", type=Path, default=Path("benchmarks/.bundles/redis-hang"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=500, help="requests pick among the first N known users")
    parser.add_argument("--normal", type=float, default=10.0)
    parser.add_argument("--paused", type=float, default=10.0)
    parser.add_argument("--resumed", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="", help="suffix of the result file (redis_hang-<name>.json)")
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        bundle = args.bundles / "current"
        if not bundle.exists():
            from benchmarks.api_quality import build_with_cli

            build_with_cli(args.data_dir, args.bundles, "default", seed=0)
    phases = hang(
        bundle.resolve(),
        known_users(bundle, args.users),
        concurrency=args.concurrency,
        normal_s=args.normal,
        paused_s=args.paused,
        resumed_s=args.resumed,
    )
    columns = ["phase", "requests", "failed", "req_per_s", "p50_ms", "p99_ms", "max_ms", *COUNTED]
    print(" | ".join(columns))
    for row in phases:
        print(" | ".join(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    report = {
        "command": "python -m benchmarks.redis_hang "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v not in (None, "") and k not in ("out", "name", "bundles")
        ),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "phases": phases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    ratio = phases[1]["p99_ms"] / phases[0]["p99_ms"]
    print(f"Redis hung: p99 {ratio:.2f} x normal (target <= 2); requests failed: {sum(p['failed'] for p in phases)}")
    report["paused_p99_over_normal"] = round(ratio, 3)
    name = f"redis_hang-{args.name}.json" if args.name else "redis_hang.json"
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
