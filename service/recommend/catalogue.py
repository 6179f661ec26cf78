"""The item catalogue grown in place as items are added live: growable buffers, so that a PUT costs the rows it
adds (amortised), not a copy of every item array.

Readers never lock. Each append writes rows past the end that any published view can see, then publishes new
views one row range longer; rows inside a published view are never written again. When a buffer is full it
is replaced by one `GROWTH` times larger (one copy, amortised over the appends that fill the new space); views
handed out before keep the old buffer alive and stay valid. The id list and id -> index map are shared the same
way: appended in place, read through views bounded by their length (`IdList`, `IdIndex`), so a request holding
an older view never meets an item it has no rows for. One writer at a time (LiveItems holds a lock).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np

GROWTH = 1.5  # each reallocation: capacity x 1.5 (an append then copies each row 3 times at most, amortised)
MIN_CAPACITY = 1024  # spare rows the first growth makes room for, at least


class RowBuffer:
    """Rows of one array, grown in place. `append(rows, at)` writes them at row `at` (the catalogue's length:
    rows past it, left by an append that failed half-way, are overwritten) and returns the view [: at + len(rows)]."""

    def __init__(self, rows: np.ndarray) -> None:
        self._buffer = rows  # the bundle's own array at first: spare room is made on the first append

    def append(self, rows: np.ndarray, at: int) -> np.ndarray:
        end = at + len(rows)
        if end > len(self._buffer):
            capacity = max(end, int(len(self._buffer) * GROWTH), at + MIN_CAPACITY)
            grown = np.empty((capacity, *self._buffer.shape[1:]), dtype=self._buffer.dtype)
            grown[:at] = self._buffer[:at]
            self._buffer = grown
        self._buffer[at:end] = rows
        return self._buffer[:end]

    @property
    def capacity(self) -> int:
        return len(self._buffer)


class IdList(Sequence[str]):
    """The first `n` entries of a list that grows in place (a view: later appends are not seen)."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: list[str], n: int) -> None:
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return self._items[: self._n][i]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._items[i % self._n]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items[: self._n])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class IdIndex(Mapping[str, int]):
    """id -> index for the first `n` items of a map that grows in place (a view: later additions are not seen)."""

    __slots__ = ("_ids", "_index", "_n")

    def __init__(self, index: dict[str, int], ids: list[str], n: int) -> None:
        self._index, self._ids, self._n = index, ids, n

    def __getitem__(self, item_id: str) -> int:
        i = self._index[item_id]
        if i >= self._n:
            raise KeyError(item_id)
        return i

    def __contains__(self, item_id: object) -> bool:
        i = self._index.get(item_id)  # type: ignore[call-overload]
        return i is not None and i < self._n

    def get(self, item_id: str, default: int | None = None) -> int | None:  # type: ignore[override]
        i = self._index.get(item_id)
        return i if i is not None and i < self._n else default

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids[: self._n])


ARRAYS = (
    "item_embeddings",
    "item_dense",
    "item_log_popularity",
    "item_recent_popularity",
    "item_neighbours",
    "item_neighbour_weights",
)


class Catalogue:
    """The writer's side: the bundle's item arrays, ids, titles and id map, appended to in place. `append`
    returns the fields to `dataclasses.replace` into the bundle (views of `n` items). Built from a bundle at its
    first live item (the arrays' first growth is the one full copy, then amortised)."""

    def __init__(self, ids: Sequence[str], titles: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        self.n = len(ids)
        self._ids = list(ids)
        self._titles = list(titles)
        self._index = {item_id: i for i, item_id in enumerate(self._ids)}
        self._buffers = {name: RowBuffer(rows) for name, rows in arrays.items()}

    def append(self, ids: Sequence[str], titles: Sequence[str], rows: Mapping[str, np.ndarray]) -> dict[str, object]:
        """Rows for every array (each `len(ids)` long), then the ids: the views returned hold them all; views
        published earlier see none of it."""
        if set(rows) != set(self._buffers) or any(len(r) != len(ids) for r in rows.values()):
            raise ValueError("one row per new item for every catalogue array")
        at, end = self.n, self.n + len(ids)
        views: dict[str, object] = {name: self._buffers[name].append(r, at) for name, r in rows.items()}
        for stale in self._ids[at:]:  # left by an append that failed half-way
            if self._index.get(stale, -1) >= at:
                del self._index[stale]
        del self._ids[at:], self._titles[at:]
        self._ids.extend(ids)
        self._titles.extend(titles)
        self._index.update((item_id, at + j) for j, item_id in enumerate(ids))
        self.n = end
        views |= {
            "item_ids": IdList(self._ids, end),
            "item_titles": IdList(self._titles, end),
            "item_index": IdIndex(self._index, self._ids, end),
        }
        return views

    def capacity(self, name: str) -> int:
        return self._buffers[name].capacity
