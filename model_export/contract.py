"""The data contract: interactions, items and (optionally) users as tables, CSV or Parquet (docs/data.md).

    interactions  user_id, item_id, timestamp (required); event_type, rating, weight (optional)
    items         (optional: without it the catalogue is the ids the log names) item_id (required); title,
                  description, categories ('|'-separated), year, numeric feature columns, other text columns
    users         user_id (required); categorical columns (optional)

Ids are strings of any form (a Parquet integer id is read as its decimal text). A timestamp is seconds since
the epoch (an integer or a float) or an ISO 8601 date-time. An interaction is a positive unless it says
otherwise: `rating` below `min_rating` (the exporter's setting, 4 by default), `weight` <= 0, or `event_type`
`dislike` make it negative feedback (the item counts as seen, never recommended to that user, and is not part of
their history). Every error names the file, the row (a CSV's line number, a Parquet file's row from 1) and the
column.

`load_contract` reads the tables into the exporter's `Dataset`; `write_contract` writes a `Dataset` back in the
contract (how the MovieLens readers' output and the synthetic generator are shown to fit it:
`python -m model_export sample-data`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from model_export.data import DataError, Dataset, Interactions
from service.recommend.features import UNKNOWN_NUMERIC_FEATURE, item_dense_row, year_of

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_INTERACTION_COLUMNS = ("event_type", "rating", "weight")
EVENT_TYPES = ("view", "click", "like", "purchase", "dislike")
ITEM_TEXT_COLUMNS = ("title", "description", "categories")
NUMERIC_PREFIX = "num:"  # item_dense columns of the items table's numeric feature columns, scaled to [0, 1]
POSITIVE, NEGATIVE = math.inf, -math.inf  # the rating of an interaction without one (every threshold agrees)


@dataclass(frozen=True)
class Table:
    """A table's columns as strings ('' for a missing value), and how to name a row in an error."""

    path: Path
    columns: dict[str, list[str]]
    csv_lines: list[int] | None  # a CSV row's line number; None: Parquet (rows from 1)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def where(self, row: int, column: str) -> str:
        line = f"line {self.csv_lines[row]}" if self.csv_lines is not None else f"row {row + 1}"
        return f"{self.path}: {line}, column {column!r}"

    def require(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DataError(f"{self.path}: missing required column(s) {missing}; columns are {list(self.columns)}")


def read_table(path: Path) -> Table:
    """A CSV (UTF-8, a header row) or Parquet file, by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> Table:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: line 1: no header row")
        header = [h.strip() for h in header]
        duplicated = sorted({h for h in header if header.count(h) > 1})
        if duplicated:
            raise DataError(f"{path}: line 1: column(s) {duplicated} appear more than once")
        columns: dict[str, list[str]] = {h: [] for h in header}
        lines: list[int] = []
        try:
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num}: {len(fields)} fields, the header has {len(header)}"
                    )
                for name, value in zip(header, fields, strict=True):
                    columns[name].append(value.strip())
                lines.append(reader.line_num)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    return Table(path, columns, lines)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with the train extra
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        columns[name] = ["" if v is None else _text(v) for v in values]
    return Table(path, columns, None)


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(table: Table, row: int, column: str) -> float:
    value = table.columns[column][row]
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{table.where(row, column)}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{table.where(row, column)}: not a finite number: {value!r}")
    return number


def timestamp_of(table: Table, row: int) -> int:
    """Row `row`'s timestamp in seconds since the epoch (the column holds seconds or ISO 8601)."""
    value = table.columns["timestamp"][row]
    if not value:
        raise DataError(f"{table.where(row, 'timestamp')}: empty (a timestamp is required)")
    try:
        return int(float(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(
            f"{table.where(row, 'timestamp')}: neither seconds since the epoch nor an ISO 8601 date-time: {value!r}"
        ) from None
    return int(parsed.timestamp())


def _ids(table: Table, column: str) -> list[str]:
    ids = table.columns[column]
    for row, value in enumerate(ids):
        if not value:
            raise DataError(f"{table.where(row, column)}: empty id")
    return ids


def _is_numeric(values: list[str]) -> bool:
    present = [v for v in values if v]
    if not present:
        return False
    try:
        return all(math.isfinite(float(v)) for v in present)
    except ValueError:
        return False


def load_contract(
    interactions: Path, items: Path | None = None, users: Path | None = None, name: str = "contract"
) -> Dataset:
    """The tables as the exporter's Dataset (a rating kept as given: the exporter compares it with its
    `min_rating`; an interaction without one is POSITIVE or NEGATIVE). Without an items table the catalogue is
    the items the log names (in order of first appearance), with no title, text or features."""
    log = read_table(interactions)
    log.require(INTERACTION_COLUMNS)
    if items is not None:
        item_table = read_table(items)
        item_table.require(["item_id"])
    else:
        named = list(dict.fromkeys(_ids(log, "item_id")))
        item_table = Table(interactions, {"item_id": named}, None)
    item_ids = _ids(item_table, "item_id")
    seen: dict[str, int] = {}
    for row, item_id in enumerate(item_ids):
        if item_id in seen:
            raise DataError(f"{item_table.where(row, 'item_id')}: item {item_id!r} appears twice")
        seen[item_id] = row

    user_column, item_column = _ids(log, "user_id"), _ids(log, "item_id")
    item_rows = np.empty(len(log), dtype=np.int64)
    for row, item_id in enumerate(item_column):
        found = seen.get(item_id)
        if found is None:
            raise DataError(f"{log.where(row, 'item_id')}: item {item_id!r} is not in {item_table.path}")
        item_rows[row] = found
    timestamps = np.fromiter((timestamp_of(log, r) for r in range(len(log))), dtype=np.int64, count=len(log))
    ratings = _ratings(log)

    user_ids = list(dict.fromkeys(user_column))
    user_index = {u: i for i, u in enumerate(user_ids)}
    log_interactions = Interactions(
        user=np.fromiter((user_index[u] for u in user_column), dtype=np.int64, count=len(log)),
        item=item_rows,
        rating=ratings,
        timestamp=timestamps,
    )
    user_table = read_table(users) if users is not None else None
    return assemble(name, log_interactions, user_ids, item_table, user_table)


def assemble(
    name: str, interactions: Interactions, user_ids: list[str], item_table: Table, user_table: Table | None
) -> Dataset:
    """The Dataset of `interactions` (coded: `user_ids` and `item_table`'s rows), with the items' features from
    `item_table` and the users' from `user_table` (ids checked unique in each)."""
    item_ids = _ids(item_table, "item_id")
    titles, dense, dense_names, descriptions = _item_features(item_table)
    categorical, categorical_names, cardinalities = _user_features(user_table, user_ids)
    return Dataset(
        name=name,
        interactions=interactions,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_dense=dense,
        item_dense_names=dense_names,
        user_categorical=categorical,
        user_categorical_names=categorical_names,
        user_categorical_cardinalities=cardinalities,
        item_descriptions=descriptions,
    )


def _ratings(log: Table) -> np.ndarray:
    """Each interaction's rating: its own, else POSITIVE / NEGATIVE from `weight` and `event_type`."""
    ratings = np.full(len(log), POSITIVE, dtype=np.float32)
    for row in range(len(log)):
        if "rating" in log.columns and log.columns["rating"][row]:
            ratings[row] = _number(log, row, "rating")
            continue
        if "weight" in log.columns and log.columns["weight"][row] and _number(log, row, "weight") <= 0:
            ratings[row] = NEGATIVE
        if "event_type" in log.columns and log.columns["event_type"][row]:
            event = log.columns["event_type"][row]
            if event not in EVENT_TYPES:
                raise DataError(f"{log.where(row, 'event_type')}: {event!r} is not one of {', '.join(EVENT_TYPES)}")
            if event == "dislike":
                ratings[row] = NEGATIVE
    return ratings


def _item_features(table: Table) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """Titles, the dense features (categories multi-hot, release year, numeric columns scaled to [0, 1]; in the
    order the service's item_dense_row builds for items added live), their names, and each item's description
    (its description and other text columns)."""
    ids = table.columns["item_id"]
    n = len(ids)
    titles = [t or i for t, i in zip(table.columns.get("title", [""] * n), ids, strict=True)]
    categories = [[c.strip() for c in v.split("|") if c.strip()] for v in table.columns.get("categories", [""] * n)]
    vocabulary = sorted({c for cs in categories for c in cs})
    years: list[int | None] = [None] * n
    if "year" in table.columns:
        years = [int(_number(table, r, "year")) if v else None for r, v in enumerate(table.columns["year"])]
    names = [f"genre:{c}" for c in vocabulary] + (["release_year"] if "year" in table.columns else [])
    rows = [item_dense_row(names, categories[i], years[i]) for i in range(n)]
    dense = np.stack(rows) if rows else np.zeros((0, len(names)), dtype=np.float32)
    numeric: list[str] = []
    text_columns: list[str] = []
    for column, values in table.columns.items():
        if column in ("item_id", "year", *ITEM_TEXT_COLUMNS):
            continue
        (numeric if _is_numeric(values) else text_columns).append(column)
    blocks = [dense]
    for column in numeric:
        raw = [_number(table, r, column) if v else np.nan for r, v in enumerate(table.columns[column])]
        numbers = np.array(raw, dtype=np.float64)
        lo, hi = np.nanmin(numbers), np.nanmax(numbers)
        scaled = (numbers - lo) / (hi - lo) if hi > lo else np.zeros_like(numbers)
        blocks.append(np.where(np.isnan(numbers), UNKNOWN_NUMERIC_FEATURE, scaled).astype(np.float32)[:, None])
        names.append(NUMERIC_PREFIX + column)
    descriptions = []
    for i in range(n):
        parts = [table.columns["description"][i]] if "description" in table.columns else []
        parts += [f"{c}: {table.columns[c][i]}" for c in text_columns if table.columns[c][i]]
        descriptions.append(" ".join(p for p in parts if p))
    return titles, np.concatenate(blocks, axis=1).astype(np.float32), names, descriptions


def _user_features(table: Table | None, user_ids: list[str]) -> tuple[np.ndarray, list[str], list[int]]:
    """Each categorical column of the users table as codes 1..n by first appearance (0: unknown, for users the
    table does not list or leaves blank)."""
    if table is None:
        return np.zeros((len(user_ids), 0), dtype=np.int64), [], []
    table.require(["user_id"])
    row_of: dict[str, int] = {}
    for row, user_id in enumerate(_ids(table, "user_id")):
        if user_id in row_of:
            raise DataError(f"{table.where(row, 'user_id')}: user {user_id!r} appears twice")
        row_of[user_id] = row
    names = [c for c in table.columns if c != "user_id"]
    out = np.zeros((len(user_ids), len(names)), dtype=np.int64)
    cardinalities = []
    for j, column in enumerate(names):
        codes: dict[str, int] = {}
        for value in table.columns[column]:
            if value:
                codes.setdefault(value, len(codes) + 1)
        for u, user_id in enumerate(user_ids):
            found = row_of.get(user_id)
            value = table.columns[column][found] if found is not None else ""
            out[u, j] = codes.get(value, 0)
        cardinalities.append(len(codes) + 1)
    return out, names, cardinalities


def write_contract(dataset: Dataset, directory: Path) -> dict[str, Path]:
    """`dataset` as contract CSVs (interactions.csv, items.csv, users.csv) that `load_contract` reads back to
    the same data. Ratings are written as given; NEGATIVE / POSITIVE as event types."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.csv" for name in ("interactions", "items", "users")}
    categories = [n.removeprefix("genre:") for n in dataset.item_dense_names if n.startswith("genre:")]
    numeric = [
        (j, n.removeprefix(NUMERIC_PREFIX))
        for j, n in enumerate(dataset.item_dense_names)
        if n.startswith(NUMERIC_PREFIX)
    ]
    years = year_of(dataset.item_dense, dataset.item_dense_names)
    has_year = "release_year" in dataset.item_dense_names
    with paths["items"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        header = ["item_id", "title", "categories", *(["year"] if has_year else []), *(n for _, n in numeric)]
        writer.writerow([*header, "description"])
        for i, item_id in enumerate(dataset.item_ids):
            row_categories = [c for j, c in enumerate(categories) if dataset.item_dense[i, j] > 0]
            year = [str(years[i]) if years[i] else ""] if has_year else []
            # Numeric columns as the Dataset holds them (scaled to [0, 1]: scaling them again changes nothing).
            features = [f"{dataset.item_dense[i, j]:.9g}" for j, _ in numeric]
            description = dataset.item_descriptions[i] if dataset.item_descriptions else ""
            writer.writerow([item_id, dataset.item_titles[i], "|".join(row_categories), *year, *features, description])
    interactions = dataset.interactions
    with paths["interactions"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp", "rating", "event_type"])
        columns = (interactions.user, interactions.item, interactions.rating, interactions.timestamp)
        for u, i, r, t in zip(*(c.tolist() for c in columns), strict=True):
            rated = math.isfinite(r)
            event = "" if rated else ("dislike" if r < 0 else "view")
            writer.writerow([dataset.user_ids[u], dataset.item_ids[i], t, f"{r:g}" if rated else "", event])
    with paths["users"].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", *dataset.user_categorical_names])
        for u, user_id in enumerate(dataset.user_ids):
            codes = dataset.user_categorical[u] if dataset.user_categorical.shape[1] else []
            writer.writerow([user_id, *[f"c{int(c)}" if c else "" for c in codes]])
    return paths
