"""Items added while serving (`PUT /v1/items/{item_id}`): embedded from their content by `ItemEncoder`, appended
to the catalogue and the FAISS index at once, and persisted as a JSON-lines delta file that is replayed at
start-up (against whatever bundle is then loaded, so a new bundle re-embeds them with its own models).

An item's record is what the client sent (id, title, genres, year, description), never an embedding.
Calls are serialised by a lock and run in the compute thread pool. Several server processes share the file:
each appends under an exclusive file lock after reading what the others appended (so the file holds one
order and one content per id), and `sync` adds what the others were sent.
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

from service.features import item_dense_row, item_text
from service.item_encoder import ItemEncoder
from service.pipeline import Pipeline

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
    def __init__(self, pipeline: Pipeline, encoder: ItemEncoder, delta_path: Path | None) -> None:
        self._pipeline = pipeline
        self._encoder = encoder
        self._path = delta_path
        self._lock = threading.Lock()
        self._records: dict[str, ItemRecord] = {}
        self._offset = 0  # bytes of the delta file read so far

    def __len__(self) -> int:
        return len(self._records)

    def upsert(self, record: ItemRecord) -> bool:
        """Add the item; False if this exact item was already added (idempotent). Raises ItemConflict for an
        id already taken by other content, OSError if the delta file cannot be written (then nothing changed)."""
        with self._lock:
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

    def behind(self) -> bool:
        """Whether the delta file holds lines this process has not read (another process appended them)."""
        try:
            return self._path is not None and self._path.stat().st_size > self._offset
        except FileNotFoundError:
            return False

    def sync(self) -> int:
        """Add the items appended to the delta file since this process last read it (at start-up: all of it;
        records whose id the bundle now holds are skipped). Returns how many."""
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
