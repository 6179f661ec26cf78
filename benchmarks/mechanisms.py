"""The home-made mechanisms against the library's way, and the code before a change against after, in one run.

    python -m benchmarks.mechanisms [--size 100000] [--concurrency 16 64] [--rounds 2] [--before DIR]

For a synthetic bundle of `--size` items (benchmarks.serve builds it once), `python -m service` is driven by wrk
(`POST /v1/recommendations`, k=10, Redis cache on, as benchmarks.serve) in each variant below, every variant once
per round, rounds interleaved so that a drift of the machine falls on all of them alike:
- as served: the defaults;
- FastAPI routing: RECO_HTTP_FAST_PATH=false (service.api.fast_path off);
- redis-py client: RECO_REDIS_READS=client (service.store.redis_batch off);
- ThreadPoolExecutor: RECO_COMPUTE_POOL=executor (service.core.threads off);
- 2 workers, SO_REUSEPORT and 2 workers, one shared socket: RECO_WORKERS=2 with RECO_REUSE_PORT=true / false
  (service.core.sockets);
- before: with `--before DIR`, the defaults served from the source tree in DIR (e.g. a `git worktree` of an
  earlier commit), with the same interpreter and packages.
Per variant and concurrency: the median over rounds of req/s and p99, and each against its reference (as served,
or the 2-worker SO_REUSEPORT run). Writes `--out`/mechanisms.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.serve import WRK_SCRIPT, Server, load_test_args, machine_info, serving_bundle, wrk

VARIANTS: dict[str, dict[str, str]] = {
    "as served": {},
    "FastAPI routing": {"RECO_HTTP_FAST_PATH": "false"},
    "redis-py client": {"RECO_REDIS_READS": "client"},
    "ThreadPoolExecutor": {"RECO_COMPUTE_POOL": "executor"},
    "2 workers, SO_REUSEPORT": {"RECO_WORKERS": "2", "RECO_REUSE_PORT": "true"},
    "2 workers, one shared socket": {"RECO_WORKERS": "2", "RECO_REUSE_PORT": "false"},
}
REFERENCE = {"2 workers, one shared socket": "2 workers, SO_REUSEPORT"}


def run_variant(bundle: Path, env: dict[str, str], args: argparse.Namespace, cwd: Path | None) -> dict[str, Any]:
    server = Server(bundle, env, cwd=cwd)
    wrk_env = {"BENCH_USERS": str(args.users)}
    try:
        wrk(server.url, "/v1/recommendations", WRK_SCRIPT, 16, args.warmup, wrk_env)  # fills the cache
        out = {}
        for c in args.concurrency:
            run = wrk(server.url, "/v1/recommendations", WRK_SCRIPT, c, args.duration, wrk_env)
            out[str(c)] = {"rps": run["rps"], "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "errors": run["errors"]}
    finally:
        server.stop()
    return out


def summarise(rounds: dict[str, list[dict[str, Any]]], concurrency: list[int]) -> dict[str, Any]:
    medians = {
        name: {
            str(c): {m: statistics.median(r[str(c)][m] for r in runs) for m in ("rps", "p50_ms", "p99_ms")}
            | {"errors": sum(r[str(c)]["errors"] for r in runs)}
            for c in concurrency
        }
        for name, runs in rounds.items()
    }
    for name, row in medians.items():
        ref = medians.get(REFERENCE.get(name, "as served"), row)  # a reference not in this run: against itself
        for c, cell in row.items():
            cell["rps_vs_reference"] = cell["rps"] / ref[c]["rps"]
            cell["p99_vs_reference"] = cell["p99_ms"] / ref[c]["p99_ms"]
    return medians


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### Mechanisms ({m['cpu_model']}, {m['cpus']} CPUs, wrk on the same cores; {report['size']} items, "
        f"{report['rounds']} rounds of {report['duration_s']} s, medians)",
        "",
        "`python -m benchmarks.mechanisms" + (" --before DIR" if "before" in report["variants"] else "") + "`; "
        "each variant against its reference (as served; the shared socket against SO_REUSEPORT).",
        "",
        "| variant | " + " | ".join(f"c={c} req/s | c={c} p99 ms" for c in report["concurrency"]) + " |",
        "| --- |" + " --- | --- |" * len(report["concurrency"]),
    ]
    for name, row in report["variants"].items():
        cells = []
        for c in report["concurrency"]:
            x = row[str(c)]
            cells += [
                f"{x['rps']:.0f} ({x['rps_vs_reference']:.2f} x)",
                f"{x['p99_ms']:.1f} ({x['p99_vs_reference']:.2f} x)",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="items in the synthetic bundle")
    parser.add_argument("--n-users", type=int, default=6000, help="users in the synthetic data")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of traffic before measuring")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, help="a source tree to serve as the 'before' variant")
    parser.add_argument("--only", nargs="+", help="these variants only (names as in the table)")
    args = load_test_args(parser)
    bundle = serving_bundle(args.size, args.bundles, args.n_users).resolve()
    variants = {name: env for name, env in VARIANTS.items() if not args.only or name in args.only}
    if args.before is not None:
        variants["before"] = {}
    base = {"RECO_REDIS_URL": args.redis_url, "RECO_DEV_MODE": "true"}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, env in variants.items():
            cwd = args.before.resolve() if name == "before" else None
            result = run_variant(bundle, base | env, args, cwd)
            rounds[name].append(result)
            cells = "  ".join(f"c={c} {x['rps']:.0f} req/s p99 {x['p99_ms']:.1f} ms" for c, x in result.items())
            print(f"round {r + 1} {name:<30} {cells}", flush=True)
    report = {
        "machine": machine_info(),
        "size": args.size,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "variants": summarise(rounds, args.concurrency),
        "runs": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mechanisms.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "mechanisms.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
