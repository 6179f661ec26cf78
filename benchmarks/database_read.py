"""Reading the training data out of the service's database: memory and time as the log grows.

    python -m benchmarks.database_read [--sizes 500000,2000000] [--database postgresql+psycopg://...] [--out DIR]

Each size is a fresh PostgreSQL database (on the server `--database` names) holding a synthetic catalogue, its users
and that many events (written with COPY-free bulk inserts, not timed). Then, each in its own process: the streamed
read the exporter uses (`model_export.database.load_database`, events in chunks of 100,000 rows into arrays) and
the read it replaced (`export_tables` to contract CSVs, then `load_contract`: every row as Python strings). Recorded:
seconds and peak RSS of each, over the process's RSS before reading. Writes `<out>/database_read.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ingest import POSTGRES, fresh_postgres

USERS_PER = 40  # events per user
ITEMS_PER = 200  # events per item


def fill(url: str, size: int, seed: int = 0) -> None:
    """`size` events of `size // USERS_PER` users on `size // ITEMS_PER` items, in the service's schema."""
    import sqlalchemy as sa

    from service.store.schema import events, items, migrate, users

    migrate(url)
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, size // USERS_PER), max(1, size // ITEMS_PER)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(items),
            [
                {"item_id": f"i{i}", "title": f"Item {i}", "description": "", "categories": f"c{i % 20}"}
                | {"year": 1990 + i % 30, "attributes": "{}", "source": "import", "created_at": 0.0}
                for i in range(n_items)
            ],
        )
        connection.execute(
            sa.insert(users),
            [
                {"user_id": f"u{u}", "first_seen": 0.0, "last_seen": 0.0, "attributes": json.dumps({"g": str(u % 3)})}
                for u in range(n_users)
            ],
        )
        chunk = 50_000
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            user = rng.integers(0, n_users, n)
            item = np.minimum(rng.zipf(1.3, n) - 1, n_items - 1)
            when = 1.6e9 + rng.random(n) * 3e7
            connection.execute(
                sa.insert(events),
                [
                    {"user_id": f"u{u}", "item_id": f"i{i}", "event_type": "view", "timestamp": float(t)}
                    | {"received_at": float(t), "rating": None}
                    for u, i, t in zip(user.tolist(), item.tolist(), when.tolist(), strict=True)
                ],
            )
    engine.dispose()


def read(url: str, how: str) -> dict[str, Any]:
    """One read in this process: seconds, and peak RSS over the RSS before it."""
    from model_export.contract import load_contract
    from model_export.database import export_tables, load_database

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if how == "streamed":
        dataset = load_database(url)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            paths = export_tables(url, Path(workdir))
            dataset = load_contract(paths["interactions"], paths["items"], paths["users"])
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "how": how,
        "events": len(dataset.interactions),
        "seconds": round(seconds, 2),
        "peak_rss_over_start_mib": round((peak - before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500000,2000000")
    parser.add_argument("--database", default=POSTGRES, help="a PostgreSQL server URL (a database is made per size)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--read", nargs=2, metavar=("URL", "HOW"), help=argparse.SUPPRESS)  # one read, in a child
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read(*args.read)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with fresh_postgres(args.database) as url:
            fill(url, size)
            for how in ("streamed", "csv-then-contract"):
                child = [sys.executable, "-m", "benchmarks.database_read", "--read", url, how]
                done = subprocess.run(child, capture_output=True, text=True, check=True)
                row = {"size": size} | json.loads(done.stdout.splitlines()[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "command": "python -m benchmarks.database_read --sizes " + args.sizes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "database_read.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Reading the training data from PostgreSQL ({meta['date']}, {meta['machine']}; `{meta['command']}`)",
        "",
        "| events | read | seconds | peak RSS over start (MiB) |",
        "|---:|---|---:|---:|",
        *(f"| {r['size']:,} | {r['how']} | {r['seconds']} | {r['peak_rss_over_start_mib']} |" for r in rows),
    ]
    (args.out / "database_read.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
