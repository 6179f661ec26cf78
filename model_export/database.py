"""Training from the system of record: import a dataset in the data contract into the service's database, and
read back everything it holds (imported data, every event posted since, minus deleted users) to train on.

    python -m model_export import --database URL --interactions F --items F [--users F]
    python -m model_export train --database URL --out bundles/

The schema is the service's (`service.store.records`, migrated here first). An import is idempotent: its events get
ids derived from the interactions file's content and row, so importing the same file again adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from model_export.contract import (
    EVENT_TYPES,
    ITEM_TEXT_COLUMNS,
    NEGATIVE,
    POSITIVE,
    Table,
    assemble,
    load_contract,
    read_table,
    timestamp_of,
)
from model_export.data import DataError, Dataset, Interactions
from service.store.schema import events, items, live_items, migrate, users

log = logging.getLogger(__name__)
CHUNK = 5000


def _insert(engine: sa.Engine, table: sa.Table) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def import_tables(url: str, interactions: Path, item_file: Path, user_file: Path | None = None) -> dict[str, int]:
    """Load the tables into the database at `url` (validated in full first: nothing is written if a row is
    wrong). Items and users are upserted; interactions appended once. What was written, by table."""
    load_contract(interactions, item_file, user_file)  # every row checked, errors naming file, row and column
    migrate(url)
    engine = sa.create_engine(url)
    now = time.time()
    try:
        item_table = read_table(item_file)
        extra = [c for c in item_table.columns if c not in ("item_id", "year", *ITEM_TEXT_COLUMNS)]
        years = item_table.columns.get("year")
        item_rows = [
            {
                "item_id": item_id,
                "title": item_table.columns.get("title", [""] * len(item_table))[r] or item_id,
                "description": item_table.columns.get("description", [""] * len(item_table))[r],
                "categories": item_table.columns.get("categories", [""] * len(item_table))[r],
                "year": int(float(years[r])) if years and years[r] else None,
                "attributes": json.dumps({c: item_table.columns[c][r] for c in extra if item_table.columns[c][r]}),
                "source": "import",
                "created_at": now,
            }
            for r, item_id in enumerate(item_table.columns["item_id"])
        ]
        log_table = read_table(interactions)
        digest = hashlib.sha256(Path(interactions).read_bytes()).hexdigest()[:16]
        columns = log_table.columns
        event_rows = []
        for r in range(len(log_table)):
            rating = columns["rating"][r] if "rating" in columns else ""
            weight = columns["weight"][r] if "weight" in columns else ""
            event_type = columns["event_type"][r] if "event_type" in columns else ""
            if not event_type:
                event_type = "dislike" if weight and float(weight) <= 0 else "view"
            event_rows.append(
                {
                    "event_id": f"import:{digest}:{r}",
                    "user_id": columns["user_id"][r],
                    "item_id": columns["item_id"][r],
                    "event_type": event_type,
                    "timestamp": float(timestamp_of(log_table, r)),
                    "received_at": now,
                    "rating": float(rating) if rating else None,
                }
            )
        user_rows: dict[str, dict[str, object]] = {
            u: {"user_id": u, "first_seen": now, "last_seen": now, "attributes": "{}"} for u in columns["user_id"]
        }
        profiles = []  # the users file's attributes replace what an earlier import gave
        if user_file is not None:
            user_table = read_table(user_file)
            names = [c for c in user_table.columns if c != "user_id"]
            for r, user_id in enumerate(user_table.columns["user_id"]):
                attributes = {c: user_table.columns[c][r] for c in names if user_table.columns[c][r]}
                profiles.append(
                    {"user_id": user_id, "first_seen": now, "last_seen": now, "attributes": json.dumps(attributes)}
                )
                user_rows.pop(user_id, None)
        written = {"items": len(item_rows), "users": len(user_rows) + len(profiles), "events": 0}
        with engine.begin() as connection:
            upsert = _insert(engine, items)
            keep = {c: upsert.excluded[c] for c in ("title", "description", "categories", "year", "attributes")}
            for start in range(0, len(item_rows), CHUNK):
                connection.execute(
                    upsert.on_conflict_do_update(index_elements=["item_id"], set_=keep),
                    item_rows[start : start + CHUNK],
                )
            upsert = _insert(engine, users)
            keep_attributes = upsert.on_conflict_do_update(
                index_elements=["user_id"], set_={"attributes": upsert.excluded.attributes}
            )
            for start in range(0, len(profiles), CHUNK):
                connection.execute(keep_attributes, profiles[start : start + CHUNK])
            rows = list(user_rows.values())
            for start in range(0, len(rows), CHUNK):
                connection.execute(
                    upsert.on_conflict_do_nothing(index_elements=["user_id"]), rows[start : start + CHUNK]
                )
            insert = _insert(engine, events).on_conflict_do_nothing(index_elements=["event_id"])
            for start in range(0, len(event_rows), CHUNK):
                result = connection.execute(insert.returning(events.c.id), event_rows[start : start + CHUNK])
                written["events"] += len(result.all())
        return written
    finally:
        engine.dispose()


def _catalogue(connection: sa.Connection) -> list[dict[str, Any]]:
    """Every item the database holds: the imported ones by id, then those added while serving (PUT /v1/items,
    trained on from now on) in the order they came."""
    item_rows = [dict(r) for r in connection.execute(sa.select(items).order_by(items.c.item_id)).mappings()]
    imported = {row["item_id"] for row in item_rows}
    for (raw,) in connection.execute(sa.select(live_items.c.record).order_by(live_items.c.seq)):
        live = json.loads(raw)
        if live["item_id"] not in imported:
            item_rows.append(
                {
                    "item_id": live["item_id"],
                    "title": live["title"],
                    "description": live.get("description", ""),
                    "categories": "|".join(live.get("genres", [])),
                    "year": live.get("year"),
                    "attributes": "{}",
                }
            )
    if not item_rows:
        where = connection.engine.url.render_as_string(hide_password=True)
        raise DataError(f"{where}: the database holds no items (import them first)")
    return item_rows


def _item_columns(item_rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The catalogue as the contract's items table: its columns as text ('' for a missing value)."""
    attributes = [json.loads(row["attributes"] or "{}") for row in item_rows]
    extra = sorted({k for a in attributes for k in a})
    columns = {name: [str(row[name] or "") for row in item_rows] for name in ("item_id", "title", "description")}
    columns["categories"] = [row["categories"] or "" for row in item_rows]
    columns["year"] = ["" if row["year"] is None else str(row["year"]) for row in item_rows]
    columns |= {k: [str(a.get(k, "")) for a in attributes] for k in extra}
    return columns


def _user_columns(connection: sa.Connection) -> dict[str, list[str]]:
    """The users the database holds as the contract's users table (their attribute names as columns)."""
    rows = connection.execute(sa.select(users.c.user_id, users.c.attributes).order_by(users.c.user_id)).all()
    attributes = [(u, json.loads(a or "{}")) for u, a in rows]
    names = sorted({k for _, a in attributes for k in a})
    return {"user_id": [u for u, _ in attributes]} | {k: [str(a.get(k, "")) for _, a in attributes] for k in names}


def _events(connection: sa.Connection, chunk: int) -> Iterator[Sequence[Any]]:
    """Every event in the order they were written, `chunk` rows at a time (a server-side cursor where the database
    has one: the log is never held whole)."""
    query = sa.select(
        events.c.user_id,
        events.c.item_id,
        events.c.timestamp,
        events.c.received_at,
        events.c.event_type,
        events.c.rating,
    ).order_by(events.c.id)
    yield from connection.execution_options(stream_results=True, yield_per=chunk).execute(query).partitions()


def export_tables(url: str, directory: Path) -> dict[str, Path]:
    """Everything the database holds as contract CSVs in `directory`: its items, every event (an event on an
    item the database does not list is left out, and counted in the log), its users' attributes."""
    engine = sa.create_engine(url)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.csv" for name in ("interactions", "items", "users")}
    try:
        with engine.connect() as connection:
            item_columns = _item_columns(_catalogue(connection))
            for name, columns in (("items", item_columns), ("users", _user_columns(connection))):
                with paths[name].open("w", encoding="utf-8", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(columns)
                    writer.writerows(zip(*columns.values(), strict=True))
            known = set(item_columns["item_id"])
            skipped = 0
            with paths["interactions"].open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["user_id", "item_id", "timestamp", "event_type", "rating"])
                for rows in _events(connection, CHUNK):
                    for user_id, item_id, ts, received, event_type, rating in rows:
                        if item_id not in known:
                            skipped += 1
                            continue
                        when = ts if ts is not None else received
                        value = "" if rating is None or not math.isfinite(rating) else f"{rating:g}"
                        writer.writerow([user_id, item_id, f"{when:.3f}", event_type, value])
            if skipped:
                log.warning("%d events on items the database does not list were left out", skipped)
    finally:
        engine.dispose()
    return paths


def load_database(url: str, name: str = "database", chunk: int = 100_000) -> Dataset:
    """The database's contents as the exporter's Dataset, as `load_contract` reads `export_tables`' files (an
    event on an item the database does not list left out), with the time the reading began (`read_at`: a user
    deleted after it may still be in the data). The events stream through `chunk` rows at a time into columns of
    numbers: memory grows with the coded log (28 bytes an event), not with its rows as Python objects."""
    read_at = time.time()
    engine = sa.create_engine(url)
    parts: list[tuple[np.ndarray, ...]] = []
    user_index: dict[str, int] = {}
    skipped = 0
    try:
        with engine.connect() as connection:
            item_table = Table(Path("items"), _item_columns(_catalogue(connection)), None)
            item_index = {item_id: row for row, item_id in enumerate(item_table.columns["item_id"])}
            for rows in _events(connection, chunk):
                user_ids, item_ids, ts, received, event_types, ratings = zip(*rows, strict=True)
                item = np.fromiter((item_index.get(i, -1) for i in item_ids), dtype=np.int64, count=len(rows))
                keep = item >= 0
                skipped += int((~keep).sum())
                user = np.fromiter(
                    (user_index.setdefault(u, len(user_index)) for u, k in zip(user_ids, keep, strict=True) if k),
                    dtype=np.int64,
                )
                when = np.array([t if t is not None else r for t, r in zip(ts, received, strict=True)], np.float64)
                parts.append((user, item[keep], _ratings_of(event_types, ratings)[keep], _seconds(when)[keep]))
            user_table = Table(Path("users"), _user_columns(connection), None)
    finally:
        engine.dispose()
    if skipped:
        log.warning("%d events on items the database does not list were left out", skipped)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    interactions = Interactions(*(np.concatenate(c) for c in zip(empty, *parts, strict=True)))
    dataset = assemble(name, interactions, list(user_index), item_table, user_table)
    return replace(dataset, read_at=read_at)


def _ratings_of(event_types: Sequence[str], ratings: Sequence[float | None]) -> np.ndarray:
    """As the contract reads them: the event's rating, else NEGATIVE for a dislike and POSITIVE otherwise."""
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown:
        raise DataError(f"events: event_type {sorted(unknown)[0]!r} is not one of {', '.join(EVENT_TYPES)}")
    given = np.array([np.nan if r is None else r for r in ratings], dtype=np.float64)
    dislike = np.array([t == "dislike" for t in event_types], dtype=bool)
    implied = np.where(dislike, NEGATIVE, POSITIVE)
    return np.where(np.isfinite(given), given, implied).astype(np.float32)


def _seconds(when: np.ndarray) -> np.ndarray:
    """Unix seconds as the contract reads them from `export_tables`' files (written to the millisecond)."""
    return np.trunc(np.round(when, 3)).astype(np.int64)
