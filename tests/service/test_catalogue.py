"""The catalogue grown in place: appends write into spare room (no copy of the item arrays per item), views
published before an append never change, and an append that failed half-way leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from service.recommend import catalogue
from service.recommend.catalogue import Catalogue, IdIndex, IdList


def rows(n: int, start: int) -> dict[str, np.ndarray]:
    return {"emb": np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)}


def test_appends_fill_spare_room_and_earlier_views_stay_as_they_were() -> None:
    trained = rows(10, 0)
    cat = Catalogue([f"t{i}" for i in range(10)], [f"T{i}" for i in range(10)], trained)
    first = cat.append(["a"], ["A"], rows(1, 10))
    buffer = first["emb"].base
    assert cat.capacity("emb") == 10 + catalogue.MIN_CAPACITY  # the one growth, then room for many
    views = [first]
    for j in range(11, 200):
        views.append(cat.append([f"l{j}"], [f"L{j}"], rows(1, j)))
    last = views[-1]
    assert last["emb"].base is buffer  # no reallocation: no copy per append
    np.testing.assert_array_equal(last["emb"][:, 0], np.arange(200))
    for n, view in enumerate(views, start=11):  # each view: exactly the items it was published with
        ids, index = view["item_ids"], view["item_index"]
        assert isinstance(ids, IdList)
        assert isinstance(index, IdIndex)
        assert len(ids) == len(index) == len(view["emb"]) == n
        assert ids[-1] == ("a" if n == 11 else f"l{n - 1}")
        assert list(index) == list(ids)
        assert f"l{n}" not in index
        assert index.get(f"l{n}") is None
        with pytest.raises(KeyError):
            index[f"l{n}"]
        with pytest.raises(IndexError):
            ids[n]
        assert index["t3"] == 3
        assert view["item_titles"][n - 1] == view["item_titles"][-1]


def test_growth_is_geometric_and_old_views_keep_their_rows() -> None:
    cat = Catalogue(["t0"], ["T0"], rows(1, 0))
    held = cat.append(["x0"], ["X0"], rows(1, 1))
    reallocations = 0
    capacity = cat.capacity("emb")
    for j in range(2, 20_000):
        cat.append([f"x{j}"], [f"X{j}"], rows(1, j))
        if cat.capacity("emb") != capacity:
            reallocations += 1
            assert cat.capacity("emb") >= capacity * catalogue.GROWTH - 1
            capacity = cat.capacity("emb")
    assert reallocations <= 8  # 1025 -> 20000 by x1.5: log1.5(20) ~ 7.4
    np.testing.assert_array_equal(held["emb"][:, 0], [0, 1])


def test_an_append_that_failed_half_way_leaves_nothing() -> None:
    cat = Catalogue(["t0", "t1"], ["T0", "T1"], rows(2, 0) | {"pop": np.zeros(2, np.float32)})
    with pytest.raises(
        ValueError, match="one row per new item"
    ):  # a row short for one array: nothing written, nothing published
        cat.append(["a", "b"], ["A", "B"], rows(2, 2) | {"pop": np.zeros(1, np.float32)})
    assert cat.n == 2
    view = cat.append(["b"], ["B"], rows(1, 2) | {"pop": np.ones(1, np.float32)})
    assert list(view["item_ids"]) == ["t0", "t1", "b"]
    assert "a" not in view["item_index"]
    np.testing.assert_array_equal(view["pop"], [0, 0, 1])


def test_an_append_interrupted_between_arrays_is_overwritten_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalogue(["t0"], ["T0"], rows(1, 0) | {"pop": np.zeros(1, np.float32)})
    grow = catalogue.RowBuffer.append
    calls = []

    def failing(self: catalogue.RowBuffer, new: np.ndarray, at: int) -> np.ndarray:
        calls.append(at)
        if len(calls) == 2:  # the first array written, the second out of memory
            raise MemoryError
        return grow(self, new, at)

    monkeypatch.setattr(catalogue.RowBuffer, "append", failing)
    with pytest.raises(MemoryError):
        cat.append(["lost"], ["Lost"], rows(1, 99) | {"pop": np.full(1, 9, np.float32)})
    view = cat.append(["kept"], ["Kept"], rows(1, 1) | {"pop": np.ones(1, np.float32)})
    assert list(view["item_ids"]) == ["t0", "kept"]
    assert "lost" not in view["item_index"]
    np.testing.assert_array_equal(view["emb"][:, 0], [0, 1])
    np.testing.assert_array_equal(view["pop"], [0, 1])
