"""The ranker's inputs for one request, its windows trimmed to the history's length (what the service does)
against the full window (before): milliseconds per request of 500 candidates, over 300 of the bundle's users,
medians of interleaved rounds.

    python -m benchmarks.ranker_inputs BUNDLE [BUNDLE ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from service.core.bundle import load_bundle
from service.recommend.pipeline import Pipeline

ROUNDS = 8


def main() -> None:
    for path in sys.argv[1:]:
        bundle = load_bundle(Path(path))
        pipeline = Pipeline.open(bundle)
        ranker = pipeline.gbm if pipeline.gbm is not None else pipeline.ranker
        full = bundle.manifest.dims.history_length
        rng = np.random.default_rng(0)
        n_items = bundle.manifest.dims.n_items
        requests = [
            (
                int(u),
                pipeline.history(int(u)),
                rng.choice(n_items, min(500, n_items), replace=False).astype(np.int64),
                rng.random(min(500, n_items)).astype(np.float32),
            )
            for u in rng.integers(0, bundle.manifest.dims.n_users, 300)
        ]
        lengths = [len(r[1]) for r in requests]
        print(
            f"{bundle.version}: ranking {pipeline.ranking}, window {full}, history length median "
            f"{np.median(lengths):.0f} (p90 {np.percentile(lengths, 90):.0f})"
        )
        timings: dict[str, list[float]] = {"full window (before)": [], "trimmed (now)": []}
        for _ in range(ROUNDS):  # interleaved, so that the machine's drift falls on both alike
            for label, width in (("full window (before)", full), ("trimmed (now)", None)):
                t0 = time.perf_counter()
                for request in requests:
                    ranker.inputs_batch([request], width=width)
                timings[label].append((time.perf_counter() - t0) / len(requests) * 1000)
        for label, ms in timings.items():
            print(
                f"  {label}: {np.median(ms[1:]):.3f} ms per request (median of {ROUNDS - 1} rounds after one warm-up)"
            )


if __name__ == "__main__":
    main()
