"""Items added while serving (`PUT /v1/items/{item_id}`): embedded from their content by `ItemEncoder`, appended
to the catalogue and the FAISS index at once, and persisted as a JSON-lines delta file that is replayed at
start-up (against whatever bundle is then loaded, so a new bundle re-embeds them with its own models).

An item's record is what the client sent (id, title, genres, year, description), never an embedding.
Calls are serialised by a lock and run in the compute thread pool.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    def __len__(self) -> int:
        return len(self._records)

    def upsert(self, record: ItemRecord) -> bool:
        """Add the item; False if this exact item was already added (idempotent). Raises ItemConflict for an
        id already taken by other content, OSError if the delta file cannot be written (then nothing changed)."""
        with self._lock:
            held = self._records.get(record.item_id)
            if held == record:
                return False
            if held is not None:
                raise ItemConflict(f"item {record.item_id!r} was already added with different content")
            if record.item_id in self._pipeline.bundle.item_index:
                raise ItemConflict(f"item {record.item_id!r} is in the bundle; retrain to change a trained item")
            if self._path is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._add([record])
            return True

    def replay(self) -> int:
        """Re-apply the delta file (at start-up). Records whose id the bundle now holds are skipped."""
        if self._path is None or not self._path.is_file():
            return 0
        records: dict[str, ItemRecord] = {}
        for lineno, line in enumerate(self._path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = ItemRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                log.error("%s:%d: skipping an unreadable live item (%s)", self._path, lineno, e)
                continue
            if record.item_id not in self._pipeline.bundle.item_index:
                records[record.item_id] = record
        with self._lock:
            self._add(list(records.values()))
        return len(records)

    def _add(self, records: list[ItemRecord]) -> None:
        if not records:
            return
        names = self._pipeline.bundle.manifest.feature_spec.item_dense
        dense = np.stack([item_dense_row(names, r.genres, r.year) for r in records])
        texts = [item_text(r.title, r.genres, r.description) for r in records]
        embeddings = self._encoder.encode(dense, texts)
        self._pipeline.add_items([r.item_id for r in records], [r.title for r in records], dense, embeddings)
        self._records.update({r.item_id: r for r in records})
