"""Items added while serving (`PUT /v1/items/{item_id}`): embedded from their content by `ItemEncoder`, appended
to the catalogue and the FAISS index at once, and persisted, then replayed at start-up and on reload (against
whatever bundle is then loaded, so a new bundle re-embeds them with its own models).

An item's record is what the client sent (id, title, genres, year, description), never an embedding.
Calls are serialised by a lock and run in the compute thread pool. Where records are kept:
- the system of record (`service.store.records`, table `live_items`; the default): every replica and process stores
  what it is sent there (the item id is unique: the database decides between two replicas taking one id) and
  `sync` adds what the others were sent, in the database's order;
- or a JSON-lines delta file (`RECO_LIVE_ITEMS_STORE=file`, one machine): each process appends under an
  exclusive file lock after reading what the others appended (one order and one content per id).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import sqlalchemy as sa

from service.items.item_encoder import ItemEncoder
from service.recommend.features import item_dense_row, item_text
from service.recommend.pipeline import Pipeline
from service.store.records import Records, RecordsUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    title: str
    genres: list[str] = field(default_factory=list)
    year: int | None = None
    description: str = ""


class ItemConflict(Exception):
    """The id belongs to a trained item, or to a live item with different content."""


class LiveItems:
    def __init__(
        self, pipeline: Pipeline, encoder: ItemEncoder, delta_path: Path | None, records: Records | None = None
    ) -> None:
        self._pipeline = pipeline
        self._encoder = encoder
        self._path = None if records is not None else delta_path
        self._db = records
        self._lock = threading.Lock()
        self._records: dict[str, ItemRecord] = {}
        self._offset = 0  # bytes of the delta file read so far
        self._seq = 0  # the last database sequence number applied

    def __len__(self) -> int:
        return len(self._records)

    def record(self, item_id: str) -> ItemRecord | None:
        """What the client sent for an item added live (None: not one of them)."""
        return self._records.get(item_id)

    def upsert(self, record: ItemRecord) -> bool:
        """Add the item; False if this exact item was already added (idempotent). Raises ItemConflict for an
        id already taken by other content, OSError if the delta file cannot be written, RecordsUnavailable if the
        database did not take it (then nothing changed)."""
        with self._lock:
            if self._db is not None:
                return self._upsert_in_database(record)
            if self._path is None:
                if not self._check(record):
                    return False
                self._add([record])
                return True
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
                self._catch_up(f)
                if not self._check(record):
                    return False
                line = json.dumps(asdict(record), ensure_ascii=False).encode() + b"\n"
                end = f.seek(0, os.SEEK_END)
                if end > self._offset:  # a line cut short by a crash: ours must not join it
                    line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                self._offset = f.tell()
                self._add([record])
            return True

    def _upsert_in_database(self, record: ItemRecord) -> bool:
        assert self._db is not None
        self._catch_up_database()
        if not self._check(record):
            return False
        try:
            held = self._db.add_live_item(record.item_id, json.dumps(asdict(record), ensure_ascii=False))
        except sa.exc.SQLAlchemyError as e:
            raise RecordsUnavailable(f"the database did not take the item: {type(e).__name__}") from e
        if held is not None:  # another replica took the id first
            self._catch_up_database()
            if ItemRecord(**json.loads(held)) == record:
                return False
            raise ItemConflict(f"item {record.item_id!r} was already added with different content")
        self._catch_up_database()  # ours, and any the others added before it, in the database's order
        return True

    def _catch_up_database(self) -> int:
        assert self._db is not None
        try:
            stored = self._db.live_items_after(self._seq)
        except sa.exc.SQLAlchemyError as e:
            raise RecordsUnavailable(f"the database did not answer: {type(e).__name__}") from e
        return self._apply_stored(stored)

    @property
    def seq(self) -> int:
        """The last database sequence number applied (for a follower reading on its own)."""
        return self._seq

    def apply_stored(self, stored: list[tuple[int, str]]) -> int:
        """Add items a follower read from the database (`Records.live_items_after(self.seq)`); those applied
        meanwhile are skipped. How many were new."""
        with self._lock:
            return self._apply_stored(stored)

    def _apply_stored(self, stored: list[tuple[int, str]]) -> int:
        records: dict[str, ItemRecord] = {}
        for seq, raw in stored:
            if seq <= self._seq:
                continue
            self._seq = seq
            try:
                record = ItemRecord(**json.loads(raw))
            except (json.JSONDecodeError, TypeError) as e:
                log.error("live item %d in the database: skipped, unreadable (%s)", seq, e)
                continue
            if record.item_id not in self._records and record.item_id not in self._pipeline.bundle.item_index:
                records[record.item_id] = record
        self._add(list(records.values()))
        return len(records)

    def behind(self) -> bool:
        """Whether another process may have added items this one has not (the database: always asked; the
        delta file: it holds lines this process has not read)."""
        if self._db is not None:
            return True
        try:
            return self._path is not None and self._path.stat().st_size > self._offset
        except FileNotFoundError:
            return False

    def sync(self) -> int:
        """Add the items appended to the delta file since this process last read it (at start-up: all of it;
        records whose id the bundle now holds are skipped). Returns how many."""
        if self._db is not None:
            with self._lock:
                return self._catch_up_database()
        if self._path is None or not self._path.is_file():
            return 0
        with self._lock, self._path.open("rb") as f:
            return self._catch_up(f)

    def _check(self, record: ItemRecord) -> bool:
        """True if `record` is new; False if this exact item is held; ItemConflict if its id is taken."""
        held = self._records.get(record.item_id)
        if held == record:
            return False
        if held is not None:
            raise ItemConflict(f"item {record.item_id!r} was already added with different content")
        if record.item_id in self._pipeline.bundle.item_index:
            raise ItemConflict(f"item {record.item_id!r} is in the bundle; retrain to change a trained item")
        return True

    def _catch_up(self, f: BinaryIO) -> int:
        """Read the complete lines after `self._offset` and add their new items (lock held)."""
        f.seek(self._offset)
        data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written (or cut short) is read once it is complete
        records: dict[str, ItemRecord] = {}
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = ItemRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                log.error("%s: skipping an unreadable live item (%s)", self._path, e)
                continue
            held = self._records.get(record.item_id) or records.get(record.item_id)
            if held is not None:
                if held != record:
                    log.error("%s: item %r appears with other content; keeping the first", self._path, record.item_id)
            elif record.item_id not in self._pipeline.bundle.item_index:
                records[record.item_id] = record
        self._offset += end
        self._add(list(records.values()))
        return len(records)

    def _add(self, records: list[ItemRecord]) -> None:
        if not records:
            return
        names = self._pipeline.bundle.manifest.feature_spec.item_dense
        dense = np.stack([item_dense_row(names, r.genres, r.year) for r in records])
        texts = [item_text(r.title, r.genres, r.description) for r in records]
        embeddings, twins = self._encoder.encode_with_twins(dense, texts)
        self._pipeline.add_items([r.item_id for r in records], [r.title for r in records], dense, embeddings, twins)
        self._records.update({r.item_id: r for r in records})
