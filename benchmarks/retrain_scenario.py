"""The retrain scenario: a bundle published from the database, newer events posted to the service, `retrain`.

    python -m benchmarks.retrain_scenario --data-dir ../shared/data/ml-100k \
        [--database postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--preset default]

1. The earliest 90 % of the ratings (by time, over all users) are written in the data contract and imported into
   the database (`python -m model_export import`'s code); `retrain` publishes the first bundle from them.
2. `python -m service` serves it with that database as its system of record, and the newest 10 % are posted to
   `POST /v1/events` with their own timestamps, as a team's traffic would arrive (rating >= 4 as `like`, lower as
   `dislike`: negative feedback, as the import treats it).
3. `retrain` again: its gate holds out the latest events (the posted ones, never what the published bundle was
   trained on), scores the recipe trained before the cut against the published bundle, each as the service would
   serve it with those events as fresh events (model_export.retrain), and publishes or rejects.

Prints both runs' results and both gate scores; writes `<out>/retrain_scenario.{json,md}`. A PostgreSQL URL is
used as given: its tables are dropped first (`--database`; default: a SQLite file in a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import urllib.request
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from benchmarks.serve import Server
from model_export.config import PRESETS, preset
from model_export.contract import write_contract
from model_export.data import load_movielens
from model_export.database import import_tables
from model_export.retrain import RetrainResult, retrain

BATCH = 500  # events per request (the service's default limit is higher)


def post_events(url: str, events: list[dict[str, Any]]) -> int:
    """POST the events in batches; the number the service accepted."""
    accepted = 0
    for start in range(0, len(events), BATCH):
        body = json.dumps({"events": events[start : start + BATCH]}).encode()
        request = urllib.request.Request(
            f"{url}/v1/events", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            accepted += int(json.loads(response.read())["accepted"])
    return accepted


def fresh_database(url: str) -> None:
    """Drop every table of the database at `url` (the scenario starts from nothing)."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        metadata.drop_all(engine)
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


def summary(result: RetrainResult) -> dict[str, Any]:
    fields = asdict(result)
    fields["seconds"] = round(result.seconds, 1)
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database", help="SQLAlchemy URL (its tables are dropped); default: SQLite in a temp dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--share", type=float, default=0.1, help="the newest share of the ratings posted as events")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    config = preset(args.preset)
    raw = load_movielens(args.data_dir)
    inter = raw.interactions
    order = np.lexsort((np.arange(len(inter)), inter.timestamp))
    n_old = round(len(order) * (1.0 - args.share))
    old, new = np.sort(order[:n_old]), order[n_old:]
    with tempfile.TemporaryDirectory(prefix="reco-retrain-scenario-") as workdir:
        root = Path(workdir)
        url = args.database or f"sqlite:///{root / 'reco.sqlite3'}"
        fresh_database(url)
        paths = write_contract(replace(raw, interactions=inter.take(old)), root / "data")
        imported = import_tables(url, paths["interactions"], paths["items"], paths["users"])
        bundles = root / "bundles"
        first = retrain(url, bundles, config)
        print("first retrain:", json.dumps(summary(first)))
        events = [
            {
                "user_id": raw.user_ids[int(inter.user[r])],
                "item_id": raw.item_ids[int(inter.item[r])],
                "event_type": "like" if inter.rating[r] >= config.min_rating else "dislike",
                "timestamp": float(inter.timestamp[r]),
                "event_id": f"scenario-{r}",
            }
            for r in new
        ]
        # Loopback, no admin calls; the embedding cache in process (no Redis needed).
        env = {"RECO_DATABASE_URL": url, "RECO_DEV_MODE": "true", "RECO_ACCESS_LOG": "false"}
        server = Server(bundles / "current", env)
        try:
            t0 = time.perf_counter()
            accepted = post_events(server.url, events)
            posting = time.perf_counter() - t0
        finally:
            server.stop()
        print(f"posted {accepted} events in {posting:.1f} s")
        second = retrain(url, bundles, config)
        print("second retrain:", json.dumps(summary(second)))
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "data": str(args.data_dir),
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "preset": args.preset,
        "imported": imported,
        "posted_events": accepted,
        "posting_s": round(posting, 1),
        "first": summary(first),
        "second": summary(second),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrain_scenario.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"### Retrain scenario ({report['data']}, {report['database']}, preset {args.preset}, {report['date']})",
        "",
        f"- imported (the earliest {1 - args.share:.0%} by time): {imported}",
        f"- first retrain: {first.result} {first.version} in {first.seconds:.0f} s",
        f"- posted as events to the service: {accepted} in {posting:.1f} s",
        f"- second retrain: **{second.result}** {second.version} in {second.seconds:.0f} s: {second.message}",
        f"- gate, on the posted events held out (the published bundle serving them as fresh events): candidate "
        f"{second.candidate}, published {second.published}",
    ]
    (args.out / "retrain_scenario.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
