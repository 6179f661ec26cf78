"""One event write (`Records.append`) on PostgreSQL, by the length of the user's history.

    python -m benchmarks.event_write [--database postgresql+psycopg://...] [--heavy 20000]

A database of its own on the server given (dropped afterwards) holds 100,000 events over 1,000 users (as an
imported dataset would) and one user with `--heavy` events. Printed: the wall time per single-event write, and
per read of the user's latest events (`recent_entries`, a request's read on a cache miss), for a user with
about 100 events, the heavy user, and a new user; each the mean of 200 calls after 20 of warm-up.
"""

from __future__ import annotations

import argparse
import time

import sqlalchemy as sa

from benchmarks.ingest import POSTGRES, fresh_postgres
from service.store.records import NewEvent, Records
from service.store.schema import migrate

HISTORY = """
INSERT INTO events (user_id, item_id, event_type, received_at)
SELECT :prefix || (g % :users), 'i' || (g % 1682), 'click', 0 FROM generate_series(1, :n) AS g
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=POSTGRES, help="a PostgreSQL server URL (a database is made on it)")
    parser.add_argument("--heavy", type=int, default=20_000, help="events of the heavy user")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with fresh_postgres(args.database) as url:
        migrate(url)
        engine = sa.create_engine(url)
        with engine.begin() as c:
            c.execute(sa.text(HISTORY), {"prefix": "u", "users": 1000, "n": 100_000})
            c.execute(sa.text(HISTORY), {"prefix": "heavy", "users": 1, "n": args.heavy})
            c.execute(sa.text("ANALYZE events"))
        engine.dispose()
        records = Records(url, timeout_s=5.0, threads=2, recent=200)
        try:
            users = [("a user with ~100 events", "u5"), (f"a user with {args.heavy} events", "heavy0")]
            users.append(("a new user", "new"))
            for label, user in users:
                for n in range(20):
                    records.append([NewEvent(user, "i1", "click", None, f"warm-{user}-{n}")])
                t0 = time.perf_counter()
                for n in range(args.calls):
                    records.append([NewEvent(user, f"i{n}", "click", None, f"{user}-{n}")])
                write_ms = (time.perf_counter() - t0) / args.calls * 1000
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    records.recent_entries(user)
                read_ms = (time.perf_counter() - t0) / args.calls * 1000
                print(f"{label}: write {write_ms:.2f} ms, read of the latest events {read_ms:.2f} ms")
        finally:
            records.close()


if __name__ == "__main__":
    main()
