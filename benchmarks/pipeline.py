"""In-process pipeline latency per stage (no HTTP), on the CPU and, where there is one, on the GPU.

    python -m benchmarks.pipeline --bundle bundles/current [--requests 500] [--json out.json]
        [--precisions fp32 fp16] [--io-binding off on]

Per request: user encoding (ONNX user tower, cache bypassed), retrieval (FAISS), filtering, ranking (ONNX
ranker) and the total, as p50/p95/p99 in milliseconds over `--requests` users after a warm-up; one
row per device this machine offers (cpu always; cuda when ONNX Runtime and FAISS see a GPU), ONNX precision
(float16 where the bundle has the variants) and IO binding on or off. The answers of every variant are compared
with the first's: the share of the top k they agree on is printed beside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.core.bundle import load_bundle
from service.core.device import faiss_gpus, onnx_providers
from service.recommend.pipeline import Pipeline


def measure(
    pipeline: Pipeline, users: np.ndarray, k: int, num_candidates: int
) -> tuple[dict[str, dict[str, float]], list[np.ndarray]]:
    """Per-stage percentiles (ms), and each user's recommended items."""
    answers = []
    samples: dict[str, list[float]] = {
        "user_encoding": [],
        "retrieval": [],
        "filtering": [],
        "ranking": [],
        "total": [],
    }
    for warm in users[:20]:
        pipeline.recommend(int(warm), pipeline.encode(np.array([warm]))[0], k, num_candidates)
    for user in users:
        t0 = time.perf_counter()
        embedding = pipeline.encode(np.array([user]))[0]
        t1 = time.perf_counter()
        recs = pipeline.recommend(int(user), embedding, k, num_candidates)
        t2 = time.perf_counter()
        samples["user_encoding"].append(t1 - t0)
        for stage, seconds in recs.timings.items():
            samples[stage].append(seconds)
        samples["total"].append(t2 - t0)
        answers.append(recs.items)
    stats = {stage: {f"p{q}": float(np.percentile(v, q) * 1e3) for q in (50, 95, 99)} for stage, v in samples.items()}
    return stats, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/current"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    parser.add_argument("--io-binding", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(0)
    users = rng.integers(0, bundle.manifest.dims.n_users, size=args.requests)
    devices = ["cpu"]
    if "CUDAExecutionProvider" in onnx_providers("auto") and faiss_gpus("auto") > 0:
        devices.append("cuda")
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "bundle": bundle.version,
        "n_items": bundle.manifest.dims.n_items,
        "index": bundle.manifest.index.type,
        "k": args.k,
        "candidates": args.candidates,
        "requests": args.requests,
        "devices": {},
    }
    print(
        f"bundle {bundle.version}: {bundle.manifest.dims.n_items} items, index {bundle.manifest.index.type}, "
        f"k={args.k} from {args.candidates} candidates, {args.requests} requests, {os.cpu_count()} CPUs"
    )
    precisions = [p for p in args.precisions if p == "fp32" or bundle.manifest.onnx_fp16_parity_max_abs_diff]
    header = f"{'device':<6} {'onnx':<5} {'bind':<4} {'stage':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(header + "  top-k agreement")
    reference: list[np.ndarray] | None = None
    for device in devices:
        for precision in precisions:
            for io_binding in args.io_binding:
                pipeline = Pipeline.open(
                    bundle, device=device, intra_op_threads=args.threads, precision=precision, io_binding=io_binding
                )
                stats, answers = measure(pipeline, users, args.k, args.candidates)
                reference = reference or answers
                shared = [len(np.intersect1d(a, r)) / max(len(r), 1) for a, r in zip(answers, reference, strict=True)]
                agreement = float(np.mean(shared))
                results["devices"][f"{device}-{precision}-binding-{io_binding}"] = {
                    "onnx": pipeline.onnx_providers[0],
                    "faiss": pipeline.retriever.device,
                    "precision": precision,
                    "io_binding": io_binding,
                    "top_k_agreement": agreement,
                    **stats,
                }
                for stage, st in stats.items():
                    print(
                        f"{device:<6} {precision:<5} {io_binding:<4} {stage:<14} {st['p50']:>8.3f} {st['p95']:>8.3f} "
                        f"{st['p99']:>8.3f}" + (f"  {agreement:.4f}" if stage == "total" else "")
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
