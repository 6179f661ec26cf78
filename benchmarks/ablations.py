"""Every training setting re-checked on validation only: one change at a time from the defaults.

    python -m benchmarks.ablations --data-dir ../shared/data/ml-100k [--only "ranker loss bce" ...]

The data is `benchmarks.api_quality`'s training part (each user's earliest 80 % of interactions, all ratings);
its own latest 20 % per user is the validation split (`build_bundle(..., fit="split")`: the pipeline exported
and run as the service runs it, scored on those held-out positives). The API benchmark's test part (the latest
20 % of the whole data) is never read, so these comparisons choose settings without touching the figures
reported through the API. About 1-4 minutes a row on 2 cores. Writes <out>/ablations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_export.build import build_bundle
from model_export.config import ExportConfig, preset
from model_export.data import load_movielens, temporal_split

METRICS = ("ndcg@10", "recall@10", "recall@100")
ROWS = ("retrieval", "pipeline", "new_user_pipeline", "new_user_most_popular")


def changes(base: ExportConfig) -> dict[str, ExportConfig]:
    def tt(**kw: Any) -> ExportConfig:
        return replace(base, two_tower=replace(base.two_tower, **kw))

    def rk(**kw: Any) -> ExportConfig:
        return replace(base, ranker=replace(base.ranker, **kw))

    return {
        "defaults": base,
        "two-tower temperature 0.1": tt(temperature=0.1),
        "two-tower temperature 0.2": tt(temperature=0.2),
        "logQ correction off": tt(logq_correction=False),
        "no refit after early stopping": tt(refit=False),
        "embedding 128": tt(embedding_dim=128, id_dim=128),
        "history window 50": tt(history_length=50),
        "no text features": tt(text_features=False),
        "content distillation 0": tt(content_distillation=0.0),
        "hard negatives from the top 100": rk(hard_pool=100),
        "hard negatives 8": rk(hard_negatives=8),
        "ranker id 16 / categorical 8": rk(id_dim=16, categorical_dim=8),
        "ranker learns on unretrieved positives too": rk(retrieved_positives_only=False),
        "ranker loss bce": rk(loss="bce"),
        "validation window 30 %": rk(window_fraction=0.3),
        "neighbour features from ItemKNN cosine": rk(neighbour_weights="cosine"),
        "no neighbour features": rk(neighbours=0),
        "new-user ranker examples 0.2": rk(new_user_share=0.2),
        "item-item 100 + popular 20 candidates": replace(base, item_item_candidates=100, popular_candidates=20),
        "item-item 100 + popular 20 candidates, their negatives 8 + 2": replace(
            base,
            item_item_candidates=100,
            popular_candidates=20,
            ranker=replace(base.ranker, item_item_negatives=8, popular_negatives=2),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (names as in the table)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raw = load_movielens(args.data_dir)
    raw = replace(raw, interactions=temporal_split(raw.interactions, 0.2)[0])  # the API benchmark's training part
    rows = []
    for name, config in changes(preset("default")).items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            metrics = build_bundle(raw, config, Path(work), progress=False, fit="split").metrics
        row = {"change": name, "seconds": round(time.perf_counter() - started)}
        row |= {f"{r}.{m}": round(metrics[r][m], 4) for r in ROWS if r in metrics for m in METRICS}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ablations.json"
    if args.only and path.is_file():  # the rows not re-run stay as they were
        done = {r["change"] for r in rows}
        rows += [r for r in json.loads(path.read_text())["rows"] if r["change"] not in done]
        order = list(changes(preset("default")))
        rows.sort(key=lambda r: order.index(r["change"]) if r["change"] in order else len(order))
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "data": "ml-100k: benchmarks.api_quality's training part",
        "rows": rows,
    }
    path.write_text(json.dumps(report, indent=2))
    lines = [
        "| change (from the defaults) | pipeline NDCG@10 | pipeline Recall@10 | two-tower Recall@100 "
        "| new users NDCG@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = [r.get(k, "") for k in ("pipeline.ndcg@10", "pipeline.recall@10", "retrieval.recall@100")]
        lines.append(f"| {r['change']} | {' | '.join(map(str, cells))} | {r.get('new_user_pipeline.ndcg@10', '')} |")
    (args.out / "ablations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
