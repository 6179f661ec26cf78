"""CLI: `python -m model_export --dataset synthetic|movielens [--data-dir PATH] --out bundles/ [--preset tiny]`.

`--if-missing`: build only when OUT/current does not exist (the compose `export` job, the k8s init container).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from model_export.config import PRESETS, preset
from model_export.data import DataError, generate_synthetic, load_movielens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    parser.add_argument("--dataset", choices=["synthetic", "movielens"], default="synthetic")
    parser.add_argument("--data-dir", type=Path, help="MovieLens directory (ml-100k, ml-1m, ml-latest-small, ml-25m)")
    parser.add_argument("--out", type=Path, default=Path("bundles"), help="directory that receives the bundle")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the two-tower epochs of the preset")
    parser.add_argument(
        "--history-sampling",
        choices=["sequential", "shuffled"],
        help="two-tower training histories: the events before each one (default; logs whose order matters) "
        "or other events of the user at random (data whose order does not predict what comes next)",
    )
    parser.add_argument(
        "--fit",
        choices=["all", "split"],
        default="all",
        help="all (default): select settings on the temporal hold-out, then refit on every interaction, so the "
        "bundle serves from all the data; split: the bundle is the model fitted without the hold-out "
        "(evaluation-only: the held-out interactions are unknown to it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when OUT/current already exists (a one-shot job that builds the demo bundle once)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.if_missing and (args.out / "current").exists():
        print(f"bundle {(args.out / 'current').resolve().name} already in {args.out}: nothing to build")
        return 0
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    config = preset(args.preset, seed=args.seed)
    if args.epochs:
        config = replace(config, two_tower=replace(config.two_tower, epochs=args.epochs))
    if args.history_sampling:
        config = replace(config, two_tower=replace(config.two_tower, history_sampling=args.history_sampling))
    try:
        if args.dataset == "movielens":
            if args.data_dir is None:
                parser.error("--dataset movielens needs --data-dir")
            raw = load_movielens(args.data_dir)
        else:
            raw = generate_synthetic(config.synthetic, seed=config.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from model_export.build import build_bundle  # imports torch: after argument errors are reported

    result = build_bundle(raw, config, args.out, progress=not args.no_progress, fit=args.fit)
    print(f"\nbundle {result.version} -> {result.path}")
    users = result.metrics["pipeline"]["users"]
    fitted = "then refitted on all data" if args.fit == "all" else "the bundle as written"
    print(f"validation ({raw.name}, temporal hold-out, seen items excluded, full ranking, {users} users; the model")
    print(f"selected on the split, {fitted})")
    columns = ["recall@10", "ndcg@10", "recall@100", "hit_rate@10", "coverage@10"]
    print(f"{'model':<22}" + "".join(f"{c:>13}" for c in columns))
    for name, m in result.metrics.items():
        print(f"{name:<22}" + "".join(f"{m[c]:>13.4f}" for c in columns))
    print(json.dumps({"bundle": str(result.path), "version": result.version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
