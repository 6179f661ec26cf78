"""Training cost as the log grows: the default recipe's two-tower training on synthetic logs of growing size.

    python -m benchmarks.train_scale [--sizes 100000,1000000,5000000,25000000] [--epochs 1] [--out benchmarks/results]
    python -m benchmarks.train_scale --sizes 25000000 --copies 5 --steps 3000   (the 25M figure in docs/training.md)

Each size is a synthetic log (`model_export.data.generate_synthetic`, users and items growing with it: one user per
40 interactions, one item per 200) trained in its own process, as `build_bundle` trains its model-selection
two-tower model: the log made implicit, split by time per user, the ranker's window taken out, then `--epochs`
epochs over the rest (no early stopping, so every size does the same work). Recorded per size: seconds per
interaction-epoch (training alone: the epochs' wall time over the interactions trained on x epochs), the item text
embedding's seconds, peak RSS, and the quality on validation (two-tower Recall@50 on the ranker's window, the
early-stopping signal; not scored with `--steps`). Writes `<out>/train_scale.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

USERS_PER = 40  # interactions per user (the generator's mean)
ITEMS_PER = 200  # interactions per item


def tiled(dataset: Any, copies: int) -> Any:
    """`dataset`'s log `copies` times over, each copy with users of its own (the same items)."""
    import numpy as np

    from model_export.data import Interactions

    x, n = dataset.interactions, dataset.n_users
    return replace(
        dataset,
        interactions=Interactions(
            user=np.concatenate([x.user + k * n for k in range(copies)]),
            item=np.tile(x.item, copies),
            rating=np.tile(x.rating, copies),
            timestamp=np.tile(x.timestamp, copies),
        ),
        user_ids=[f"{u}~{k}" for k in range(copies) for u in dataset.user_ids],
        user_categorical=np.tile(dataset.user_categorical, (copies, 1)),
    )


def one(size: int, epochs: int, seed: int, steps: int | None = None, copies: int = 1) -> dict[str, Any]:
    """Generate and train one size in this process (see the module's doc)."""
    import torch

    from model_export.build import _window
    from model_export.config import SyntheticConfig, preset
    from model_export.data import generate_synthetic, implicit, positives, temporal_split
    from model_export.train import train_two_tower, validation_recall

    config = preset("default", seed=seed)
    config = replace(config, two_tower=replace(config.two_tower, steps_per_epoch=steps))
    part = size // copies
    synthetic = SyntheticConfig(n_users=max(100, part // USERS_PER), n_items=max(500, part // ITEMS_PER))
    t0 = time.perf_counter()
    raw = tiled(generate_synthetic(synthetic, seed=seed), copies) if copies > 1 else generate_synthetic(synthetic, seed)
    generate_s = time.perf_counter() - t0
    dataset = implicit(raw, config.min_rating)
    t0 = time.perf_counter()
    if config.two_tower.text_features and dataset.has_text:
        from model_export.text import embed_texts, item_texts, load_encoder

        dataset = replace(dataset, item_text=embed_texts(load_encoder(), item_texts(dataset)))
    text_s = time.perf_counter() - t0
    raw_train, _ = temporal_split(raw.interactions, config.holdout_fraction)
    train = positives(raw_train, dataset.n_items, config.min_rating)
    tt_train, window = _window(train, config)
    t0 = time.perf_counter()
    user_tower, item_tower, history = train_two_tower(dataset, tt_train, config, progress=False, epochs=epochs)
    train_s = time.perf_counter() - t0
    trained = min(len(tt_train), steps * config.two_tower.batch_size) if steps else len(tt_train)
    t0 = time.perf_counter()
    # (A budgeted epoch's model is not the recipe's, and scoring 600,000 users takes minutes: not scored.)
    recall = None if steps else validation_recall(user_tower, item_tower, dataset, tt_train, window, 50)
    validation_s = time.perf_counter() - t0
    return {
        "interactions": len(raw.interactions),
        "users": dataset.n_users,
        "items": dataset.n_items,
        "trained_on": len(tt_train),
        "epochs": epochs,
        "generate_s": round(generate_s, 1),
        "item_text_s": round(text_s, 1),
        "train_s": round(train_s, 1),
        "steps_per_epoch": steps,
        "us_per_interaction_epoch": round(train_s / (trained * epochs) * 1e6, 1),
        "validation_recall@50": None if recall is None else round(recall, 4),
        "copies": copies,
        "validation_s": round(validation_s, 1),
        "loss": [round(x, 4) for x in history["loss"]],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
    }


def write(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_scale.json").write_text(json.dumps({**meta, "sizes": rows}, indent=2) + "\n")
    lines = [
        "# Training cost as the log grows (`python -m benchmarks.train_scale`)",
        "",
        f"{meta['date']}, {meta['machine']}, commit {meta['commit']}, {meta['epochs']} epoch(s) a size, "
        f"{meta['note']}.",
        "",
        "| interactions | users | items | trained on | s | us / interaction-epoch | Recall@50 (validation) | "
        "peak RSS GiB | item text s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['trained_on']:,} | {r['train_s']} | "
            f"{r['us_per_interaction_epoch']} | {r['validation_recall@50'] or 'not scored'} | {r['peak_rss_gib']} | "
            f"{r['item_text_s']} |"
        )
    (out / "train_scale.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra: the table and JSON are written without it
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["interactions"] for r in rows]
    left.plot(x, [r["us_per_interaction_epoch"] for r in rows], marker="o")
    left.set(xscale="log", xlabel="interactions", ylabel="us per interaction-epoch", title="training cost")
    right.plot(x, [r["peak_rss_gib"] for r in rows], marker="o")
    right.set(xscale="log", xlabel="interactions", ylabel="GiB", title="peak RSS")
    fig.tight_layout()
    fig.savefig(out / "train_scale.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,5000000,25000000")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps",
        type=int,
        help="at most this many batches an epoch (a budget for the largest logs; the cost per "
        "interaction-epoch is then over the interactions those batches held)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="generate each size's log at size / copies and repeat it with new users (the generator's cost grows "
        "with users x items: 25M in one piece takes about 40 minutes on 2 cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--note", default="", help="a line on the run, written with its figures")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size, its JSON on stdout
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.epochs, args.seed, args.steps, args.copies)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, "-m", "benchmarks.train_scale", "--one", str(size), "--epochs", str(args.epochs)]
        command += ["--steps", str(args.steps)] if args.steps else []
        command += ["--copies", str(args.copies)]
        done = subprocess.run([*command, "--seed", str(args.seed)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {size} failed (exit {done.returncode})")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "commit": commit.stdout.strip() or "unknown",
            "epochs": args.epochs,
            "note": args.note or "no note",
        }
        write(rows, meta, args.out)  # after every size: a run cut short keeps what it measured


if __name__ == "__main__":
    main()
