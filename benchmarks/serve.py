"""Serving benchmark: the HTTP service under load, beside its own floors, at several catalogue sizes.

    python -m benchmarks.serve [--sizes 10000 100000] [--concurrency 1 8 32 64] [--duration 10] [--workers 1 2]

For each catalogue size, a synthetic bundle (trained on generated data, text features off; built once into
`--bundles`, reused afterwards) is served by `python -m service` as `make run` serves one (Redis cache on),
and driven by `wrk` (Debian package `wrk`) with `POST /v1/recommendations` (k=10 from 500 candidates, users
drawn at random from `--users` known users, whose embeddings the warm-up puts in Redis). Measured in
the same run, on the same machine:
- the in-process pipeline (no HTTP), per stage, with the embedding cached and with the user encoder;
- the framework floor: `GET /healthz` of the same server;
- the service, micro-batching off (RECO_BATCH_MAX_SIZE=1) and on (the settings' default), at each concurrency,
  as one process and as `--workers` processes (RECO_WORKERS);
- the server's resident memory (all its processes) and the CPU time of the server and of wrk, which shares the
  machine's cores;
- the reference a team would write instead (`benchmarks.plain_app`: one synchronous FastAPI route, HNSW ef 512,
  a 3-layer MLP in ONNX Runtime; the same bundle) as one and as `--workers` uvicorn processes, and the service's
  best throughput over the plain app's best at each concurrency (`--no-plain`: left out).
A table is printed; JSON and Markdown go to `--out` (serve.json, serve.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.core.bundle import load_bundle
from service.core.device import limit_native_threads
from service.core.metrics import MULTIPROC_ENV
from service.core.settings import Settings
from service.recommend.pipeline import Pipeline

WRK_SCRIPT = r"""
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local k = os.getenv("BENCH_K") or "10"
local headers = {["Content-Type"] = "application/json"}
math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1"))
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end  -- paced: each connection waits this long between requests
end
request = function()
  local body = '{"user_id":"' .. math.random(1, users) .. '","k":' .. k .. '}'
  return wrk.format("POST", "/v1/recommendations", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""
PACE_S = 0.001  # idle before each request of the paced in-process run
GET_SCRIPT = WRK_SCRIPT.split("request = function")[0] + WRK_SCRIPT[WRK_SCRIPT.index("done = function") :]


def serving_bundle(n_items: int, root: Path, n_users: int) -> Path:
    """A bundle trained on synthetic data with `n_items` items (built once, then reused). It serves the ranker (the
    costliest ordering, and the plain app's), from the ANN depth and in the precision its validation chose."""
    out = root / f"synthetic-{n_items}-validated"
    if (out / "current").exists():
        return out / "current"
    from model_export.build import build_bundle
    from model_export.config import SyntheticConfig, preset
    from model_export.data import generate_synthetic

    config = preset("default")
    config = replace(
        config,
        synthetic=SyntheticConfig(n_users=n_users, n_items=n_items),
        # Serving cost does not depend on how long the models trained; text features are a training input
        # only (the service embeds text for items added live), and would take ~3 ms per item here.
        two_tower=replace(config.two_tower, text_features=False, epochs=3, refit=False),
        serve_best_ordering=False,
        validation_users=2000,
    )
    print(f"building a synthetic bundle with {n_items} items into {out} ...", flush=True)
    t0 = time.perf_counter()
    result = build_bundle(generate_synthetic(config.synthetic, seed=0), config, out, progress=False, fit="split")
    print(f"built {result.version} in {time.perf_counter() - t0:.0f}s", flush=True)
    return out / "current"


def load_test_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The options the load benchmarks share (users drawn, Redis, bundle cache, output), parsed; wrk checked."""
    parser.add_argument("--users", type=int, default=2000, help="requests pick users 1..N at random")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")  # never db 0: tests read it
    parser.add_argument("--bundles", type=Path, default=Path("benchmarks/.bundles"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    return args


def machine_info() -> dict[str, Any]:
    """The platform, CPU count and model, and Python of this machine, for a report."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x),
            "unknown",
        ),
        "python": platform.python_version(),
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(samples, q) * 1e3) for q in (50, 95, 99)}


def in_process(bundle_path: Path, settings: Settings, users: np.ndarray, k: int) -> dict[str, Any]:
    """The pipeline alone, one request at a time, with the service's settings (ms)."""
    bundle = load_bundle(bundle_path)
    limit_native_threads(settings.faiss_omp_threads)  # as the service does at start-up
    pipeline = Pipeline.configured(bundle, settings)
    n = settings.num_candidates or pipeline.depth(0)
    embeddings = pipeline.encode(users)
    for u in users[:50]:
        pipeline.recommend(int(u), embeddings[0], k, n)
    samples: dict[str, list[float]] = {
        s: [] for s in ("user_encoding", "retrieval", "filtering", "ranking", "cached_total", "total")
    }
    for row, u in enumerate(users):
        t0 = time.perf_counter()
        recs = pipeline.recommend(int(u), embeddings[row], k, n)
        t1 = time.perf_counter()
        pipeline.encode(np.array([u]))
        t2 = time.perf_counter()
        for stage in ("retrieval", "filtering", "ranking"):
            samples[stage].append(recs.timings[stage])
        samples["cached_total"].append(t1 - t0)
        samples["user_encoding"].append(t2 - t1)
        samples["total"].append(t2 - t0)
    # The same requests again, each after PACE_S of idle: what a lone client (concurrency 1) leaves the CPU to do
    # between its requests. On the 2-core VMs measured here an idle core costs the next request ~30-40 %
    # (caches, clock): the floor the end-to-end latency at concurrency 1 can be compared with.
    paced = []
    for row, u in enumerate(users):
        time.sleep(PACE_S)
        t0 = time.perf_counter()
        pipeline.recommend(int(u), embeddings[row], k, n)
        paced.append(time.perf_counter() - t0)
    samples["cached_total_paced"] = paced
    out = {stage: percentiles(v) for stage, v in samples.items()}
    out["index"] = {"type": bundle.manifest.index.type, **bundle.manifest.index.params}
    out["recall_vs_exact"] = bundle.manifest.index.recall_vs_exact
    out["recall_at"] = bundle.manifest.index.recall_at
    out["depth"] = n
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m service` in a subprocess, as `make run` starts it (RECO_WORKERS processes)."""

    def __init__(self, bundle: Path, env: dict[str, str], cwd: Path | None = None, plain_workers: int = 0) -> None:
        """`cwd`: the source tree to run (`python -m service` imports the package found there; default: this one).
        `plain_workers`: serve `benchmarks.plain_app` instead, as that many uvicorn processes."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = int(env.get("RECO_WORKERS", "1"))
        full_env = os.environ | {"RECO_BUNDLE_PATH": str(bundle)}
        self.metrics_dir: Path | None = None
        if self.workers > 1 and not plain_workers:  # a directory of its own, so the benchmark can tell when every
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="reco-bench-metrics-"))  # worker is ready
            full_env[MULTIPROC_ENV] = str(self.metrics_dir)
        command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        if plain_workers:
            full_env["PLAIN_BUNDLE"] = str(bundle)
            command = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.plain_app:create_app"]
            command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(plain_workers)]
            command += ["--no-access-log"]
        # The server's own log (an access record per request) goes to a file, not into the benchmark's output.
        self.log = tempfile.NamedTemporaryFile("w+b", prefix="reco-bench-server-", suffix=".log")  # noqa: SIM115
        command += ["--log-level", "warning"]
        self.process = subprocess.Popen(command, env=full_env | env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{tail}")
            if self.ready():
                if plain_workers > 1:  # any one answers /readyz: give the others their start-up time too
                    time.sleep(5)
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not become ready in 300 s")

    def ready(self) -> bool:
        """Every worker has loaded the bundle: /readyz, and with several, the aggregated reco_ready (the least
        over the processes) once each of them has written its samples."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                if r.status != 200:
                    return False
            if self.metrics_dir is None:
                return True
            if len(list(self.metrics_dir.glob("gauge_livemin_*.db"))) < self.workers:
                return False
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
                return "\nreco_ready 1.0\n" in r.read().decode()
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The server's process and its descendants (uvicorn's workers)."""
        out, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                todo += [int(c) for c in task.read_text().split()]
        return out

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        """Resident memory of all the server's processes together."""
        total = 0.0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.log.close()


def wrk(url: str, path: str, script: str, concurrency: int, duration: int, env: dict[str, str]) -> dict[str, Any]:
    """One wrk run; its JSON summary plus throughput and the CPU time wrk itself used."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s", "-s", f.name, url + path]
    run = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(f.name)
    line = next(x for x in run.stdout.splitlines() if x.startswith("WRK_JSON "))
    out: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    seconds = out["duration_us"] / 1e6
    out["rps"] = out["requests"] / seconds
    out["errors"] = sum(out.pop(key) for key in ("connect", "read", "write", "status", "timeout"))
    out["wrk_cpu"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds
    for q in ("p50", "p95", "p99", "max", "mean"):
        out[f"{q}_ms"] = out.pop(f"{q}_us") / 1e3
    return out


def serve(
    bundle: Path, env: dict[str, str], args: argparse.Namespace, floor: bool, plain_workers: int = 0
) -> dict[str, Any]:
    server = Server(bundle, env, plain_workers=plain_workers)
    wrk_env = {"BENCH_USERS": str(args.users)}
    try:
        result: dict[str, Any] = {"env": env, "sweep": {}}
        wrk(server.url, "/v1/recommendations", WRK_SCRIPT, 16, args.warmup, wrk_env)  # fills the cache
        if floor:
            result["healthz"] = {
                str(c): wrk(server.url, "/healthz", GET_SCRIPT, c, max(3, args.duration // 2), wrk_env)
                for c in args.concurrency
            }
        for c in args.concurrency:
            cpu0 = server.cpu_seconds()
            run = wrk(server.url, "/v1/recommendations", WRK_SCRIPT, c, args.duration, wrk_env)
            run["server_cpu"] = (server.cpu_seconds() - cpu0) / (run["duration_us"] / 1e6)
            result["sweep"][str(c)] = run
            print(
                f"  c={c:<4} {run['rps']:>8.0f} req/s  p50 {run['p50_ms']:6.2f}  p95 {run['p95_ms']:6.2f}  "
                f"p99 {run['p99_ms']:6.2f} ms  errors {run['errors']}  server cpu {run['server_cpu']:.2f}  "
                f"wrk cpu {run['wrk_cpu']:.2f}",
                flush=True,
            )
        result["rss_mib"] = server.rss_mib()
        if plain_workers:
            return result
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        result["cache_hits"] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('reco_cache_requests_total{result="hit"}')
        )
    finally:
        server.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of traffic before measuring")
    parser.add_argument("--n-users", type=int, default=6000, help="users in the synthetic data")
    parser.add_argument("--modes", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server processes (RECO_WORKERS) to measure"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="RECO_X=V", help="extra server settings (repeatable)"
    )
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain reference app")
    parser.add_argument(
        "--impressions-off-too",
        action="store_true",
        help="serve each mode a second time with RECO_IMPRESSIONS=false (what recording every list costs)",
    )
    parser.add_argument("--impressions-off-first", action="store_true", help="with the above, serve that one first")
    args = load_test_args(parser)

    os.environ.update(dict(kv.split("=", 1) for kv in args.set))  # the in-process pipeline takes them too
    settings = Settings(dev_mode=True)
    machine = machine_info()
    report: dict[str, Any] = {"machine": machine, "settings": settings.model_dump(mode="json"), "sizes": {}}
    print(f"{machine['cpu_model']}, {machine['cpus']} CPUs; wrk shares them with the server (its CPU is reported)")
    rng = np.random.default_rng(0)
    for n_items in args.sizes:
        bundle = serving_bundle(n_items, args.bundles, args.n_users)
        users = rng.integers(0, args.users, size=1000)
        pipeline = in_process(bundle, settings, users, 10)
        print(
            f"{n_items} items, index {pipeline['index']}, recall@{pipeline['recall_at']} vs exact "
            f"{pipeline['recall_vs_exact']:.3f}; in-process p50: cached {pipeline['cached_total']['p50']:.3f} ms "
            f"(retrieval {pipeline['retrieval']['p50']:.3f}, filtering {pipeline['filtering']['p50']:.3f}, "
            f"ranking {pipeline['ranking']['p50']:.3f}), paced {pipeline['cached_total_paced']['p50']:.3f} ms, "
            f"user encoding {pipeline['user_encoding']['p50']:.3f} ms",
            flush=True,
        )
        entry: dict[str, Any] = {"pipeline": pipeline, "modes": {}}
        first = True
        for workers in args.workers:
            for mode in args.modes:
                env = {"RECO_REDIS_URL": args.redis_url, "RECO_DEV_MODE": "true", "RECO_WORKERS": str(workers)}
                env |= dict(kv.split("=", 1) for kv in args.set)
                if mode == "off":
                    env["RECO_BATCH_MAX_SIZE"] = "1"
                label = mode if workers == 1 else f"{mode}, {workers} workers"
                runs = [(label, env)]
                if args.impressions_off_too:  # in the order asked: which goes first matters (a warmer cache)
                    off = (f"{label}, impressions off", env | {"RECO_IMPRESSIONS": "false"})
                    runs = [off, *runs] if args.impressions_off_first else [*runs, off]
                for name, run_env in runs:
                    print(f" batching {name}:", flush=True)
                    entry["modes"][name] = serve(bundle, run_env, args, floor=first)
                    first = False
        if not args.no_plain:
            entry["plain"] = {}
            for workers in args.workers:
                print(f" plain app, {workers} worker(s):", flush=True)
                entry["plain"][str(workers)] = serve(bundle, {}, args, floor=False, plain_workers=workers)
            entry["over_plain"] = over_plain(entry)
            for c, row in entry["over_plain"].items():
                print(
                    f"  c={c}: service {row['service_rps']:.0f} req/s (p99 {row['service_p99_ms']:.1f} ms, "
                    f"{row['service']}) / plain {row['plain_rps']:.0f} req/s (p99 {row['plain_p99_ms']:.1f} ms, "
                    f"{row['plain']} worker(s)) = {row['ratio']:.2f} x",
                    flush=True,
                )
        report["sizes"][str(n_items)] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2))
    text = markdown(report, args)
    (args.out / "serve.md").write_text(text)
    print(text)


def over_plain(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per concurrency: the service's best throughput (over batching modes and worker counts) over the plain
    app's best (over worker counts), with each one's p99."""
    out = {}
    for c in next(iter(entry["modes"].values()))["sweep"]:
        mode, best = max(((m, r["sweep"][c]) for m, r in entry["modes"].items()), key=lambda x: x[1]["rps"])
        workers, plain = max(((w, r["sweep"][c]) for w, r in entry["plain"].items()), key=lambda x: x[1]["rps"])
        out[c] = {
            "service": mode,
            "service_rps": best["rps"],
            "service_p99_ms": best["p99_ms"],
            "plain": workers,
            "plain_rps": plain["rps"],
            "plain_p99_ms": plain["p99_ms"],
            "ratio": best["rps"] / plain["rps"],
        }
    return out


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    m = report["machine"]
    lines = [
        f"### Serving ({m['cpu_model']}, {m['cpus']} CPUs, wrk on the same cores; k=10, Redis cache on, "
        f"{args.duration} s per run)",
        "",
    ]
    for n_items, entry in report["sizes"].items():
        p = entry["pipeline"]
        first = next(iter(entry["modes"].values()))
        lines += [
            f"**{int(n_items):,} items**, {p['depth']} ANN candidates: index {p['index']['type']} "
            f"({', '.join(f'{k} {v}' for k, v in p['index'].items() if k != 'type') or 'exact'}), "
            f"recall@{p['recall_at']} vs exact {p['recall_vs_exact']:.3f}. In-process p50 (ms): cached embedding "
            f"{p['cached_total']['p50']:.3f} (retrieval {p['retrieval']['p50']:.3f}, filtering "
            f"{p['filtering']['p50']:.3f}, ranking {p['ranking']['p50']:.3f}); the same paced (1 ms idle before "
            f"each request, as a lone client leaves the CPU) {p['cached_total_paced']['p50']:.3f}; user encoding "
            f"{p['user_encoding']['p50']:.3f}. Framework floor (GET /healthz): "
            + ", ".join(f"c={c} {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms" for c, r in first["healthz"].items())
            + ".",
            "",
            "| batching | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | e2e p50 / pipeline p50 "
            "| req/s / floor req/s | server CPU | wrk CPU | RSS MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for mode, result in entry["modes"].items():
            for c, r in result["sweep"].items():
                lines.append(
                    f"| {mode} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} "
                    f"| {r['errors']} | {r['p50_ms'] / p['cached_total']['p50']:.2f} "
                    f"| {r['rps'] / first['healthz'][c]['rps']:.3f} | {r['server_cpu']:.2f} "
                    f"| {r['wrk_cpu']:.2f} | {result['rss_mib']:.0f} |"
                )
        modes = entry["modes"]
        lone = [(mode, r["sweep"]["1"]["p50_ms"]) for mode, r in modes.items() if "1" in r["sweep"]]
        if lone:
            lines += [
                "",
                "Concurrency 1, e2e p50 / in-process p50 (back to back; paced): "
                + ", ".join(
                    f"{mode} {ms / p['cached_total']['p50']:.2f} x; {ms / p['cached_total_paced']['p50']:.2f} x"
                    for mode, ms in lone
                )
                + ".",
            ]
        impressions = [(m, f"{m}, impressions off", f"{m}: impressions recorded / not") for m in args.modes]
        impressions += [
            (f"{m}, {w} workers", f"{m}, {w} workers, impressions off", f"{m}, {w} workers: impressions recorded / not")
            for m in args.modes
            for w in args.workers
        ]
        for a, b, what in (
            impressions
            + [("on", "off", "Batching on / off throughput")]
            + [(f"on, {w} workers", "on", f"{w} workers / 1 worker throughput (batching on)") for w in args.workers]
        ):
            if {a, b} <= set(modes):
                ratios = ", ".join(
                    f"c={c} {modes[a]['sweep'][c]['rps'] / modes[b]['sweep'][c]['rps']:.2f} x"
                    for c in modes[a]["sweep"]
                    if c in modes[b]["sweep"]
                )
                lines += ["", f"{what}: {ratios}."]
        if "over_plain" in entry:
            lines += [
                "",
                "The plain reference app (`benchmarks.plain_app`, the same bundle), its best over worker counts, "
                "against the service's best:",
                "",
                "| concurrency | service req/s (p99 ms, how) | plain req/s (p99 ms, workers) | service / plain |",
                "| --- | --- | --- | --- |",
            ]
            for c, row in entry["over_plain"].items():
                lines.append(
                    f"| {c} | {row['service_rps']:,.0f} ({row['service_p99_ms']:.1f}, {row['service']}) "
                    f"| {row['plain_rps']:,.0f} ({row['plain_p99_ms']:.1f}, {row['plain']}) | {row['ratio']:.2f} x |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
