from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export.config import SyntheticConfig
from model_export.data import (
    DataError,
    Interactions,
    generate_synthetic,
    implicit,
    load_ml1m,
    load_ml100k,
    load_ml_csv,
    load_movielens,
    negative_feedback,
    positives,
    temporal_split,
    unseen,
    user_histories,
    write_movielens_csv,
)
from tests.conftest import ML100K

GENRE_FLAGS = "|".join(["0"] * 19)


def write_ml100k(d: Path, data: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    flags_drama = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    (d / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}\n2|Heat (1995)|01-Jan-1995||http://y|{flags_drama}\n",
        encoding="latin-1",
    )
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (d / "u.data").write_text(data)
    return d


def test_ml100k_loader_exact(tmp_path: Path) -> None:
    d = write_ml100k(tmp_path / "ml", "1\t2\t5\t100\n2\t1\t3\t50\n1\t1\t4\t200\n")
    ds = load_ml100k(d)
    assert ds.user_ids == ["1", "2"]
    assert ds.item_ids == ["1", "2"]
    assert ds.interactions.user.tolist() == [0, 1, 0]
    assert ds.interactions.item.tolist() == [1, 0, 0]
    assert ds.interactions.rating.tolist() == [5.0, 3.0, 4.0]
    assert ds.interactions.timestamp.tolist() == [100, 50, 200]
    # age 24 -> bucket 18-24 (index 2), M -> 1, occupations numbered by first appearance
    assert ds.user_categorical.tolist() == [[2, 1, 1], [6, 2, 2]]
    assert ds.item_dense[1, ds.item_dense_names.index("genre:Drama")] == 1.0
    assert ds.item_dense[0, :-1].sum() == 0.0
    assert ds.item_dense[0, -1] == pytest.approx((1995 - 1900) / 130)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    d = write_ml100k(tmp_path / "ml", "1\t2\t5\t100\n1\t1\tfive\t200\n")
    with pytest.raises(DataError, match=r"u\.data:2: field 'rating' is not a number: 'five'"):
        load_ml100k(d)
    d = write_ml100k(tmp_path / "ml2", "1\t2\t5\n")
    with pytest.raises(DataError, match=r"u\.data:1: expected 4"):
        load_ml100k(d)


def test_unknown_item_and_missing_file(tmp_path: Path) -> None:
    d = write_ml100k(tmp_path / "ml", "1\t9\t5\t100\n")
    with pytest.raises(DataError, match="item ids not in the item file"):
        load_ml100k(d)
    (d / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file not found"):
        load_ml100k(d)
    with pytest.raises(DataError, match="no MovieLens files found"):
        load_movielens(tmp_path)


def test_ml1m_loader(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action|Crime\n20::Up (2009)::Animation\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (tmp_path / "ratings.dat").write_text("1::20::5::978300760\n2::10::3::978302109\n")
    ds = load_movielens(tmp_path)
    assert ds.name == "ml-1m"
    assert ds.interactions.item.tolist() == [1, 0]
    assert ds.user_categorical.tolist() == [[1, 2, 11], [7, 1, 17]]
    assert ds.item_dense_names == ["genre:Action", "genre:Animation", "genre:Crime", "release_year"]
    assert ds.item_dense[0, :3].tolist() == [1.0, 0.0, 1.0]
    (tmp_path / "ratings.dat").write_text("1::20::5::978300760\n2::10\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2"):
        load_ml1m(tmp_path)


def test_ml_csv_loader(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Jumanji (1995),(no genres listed)\n"
    )
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,1,4.5,964982703\n7,2,3.0,964981247\n")
    ds = load_movielens(tmp_path)
    assert ds.item_titles[0] == "American President, The (1995)"
    assert ds.user_ids == ["7"]
    assert ds.interactions.rating.tolist() == [4.5, 3.0]
    assert ds.item_dense[1, :-1].sum() == 0.0
    (tmp_path / "ratings.csv").write_text("user,movie,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: expected header"):
        load_ml_csv(tmp_path)


def test_implicit_rule_and_dedup(tmp_path: Path) -> None:
    d = write_ml100k(tmp_path / "ml", "1\t2\t5\t100\n1\t2\t4\t300\n1\t1\t3\t200\n2\t1\t4\t50\n")
    pos = implicit(load_ml100k(d), 4.0)
    assert list(zip(pos.interactions.user.tolist(), pos.interactions.item.tolist(), strict=True)) == [(0, 1), (1, 0)]
    assert pos.interactions.timestamp.tolist() == [100, 50]  # the first of the duplicate pair is kept
    assert "rating >= 4" in pos.positive_rule


def test_negative_feedback_is_every_pair_without_a_positive() -> None:
    inter = Interactions(
        user=np.array([0, 0, 0, 0, 1, 1]),
        item=np.array([1, 2, 2, 3, 1, 1]),
        rating=np.array([5, 2, 4, 1, 3, 2], dtype=np.float32),
        timestamp=np.array([1, 2, 3, 4, 5, 6]),
    )
    pos = positives(inter, 4, 4.0)
    assert list(zip(pos.user.tolist(), pos.item.tolist(), strict=True)) == [(0, 1), (0, 2)]
    # Item 2 of user 0 was rated 2, then 4: a positive, not negative feedback; item 1 of user 1 twice, once.
    neg = negative_feedback(inter, 4, 4.0)
    assert list(zip(neg.user.tolist(), neg.item.tolist(), strict=True)) == [(0, 3), (1, 1)]
    left = unseen(pos, inter.take(np.array([0, 4])), 4)
    assert list(zip(left.user.tolist(), left.item.tolist(), strict=True)) == [(0, 2)]


def test_csv_layout_round_trip(tmp_path: Path) -> None:
    ds = generate_synthetic(SyntheticConfig(n_users=20, n_items=30, n_genres=3, n_clusters=2), seed=1)
    write_movielens_csv(ds, ds.interactions, tmp_path)
    back = load_movielens(tmp_path)
    assert back.name == "movielens-csv"
    assert back.item_ids == ds.item_ids
    assert back.item_titles == ds.item_titles
    assert back.user_categorical.shape == (ds.n_users, 0)
    assert sorted(back.user_ids, key=int) == sorted(ds.user_ids, key=int)
    genres = [n for n in ds.item_dense_names if n.startswith("genre:")]
    assert [n for n in back.item_dense_names if n.startswith("genre:")] == genres
    assert np.array_equal(back.item_dense[:, : len(genres)], ds.item_dense[:, : len(genres)])
    rows = {
        (ds.user_ids[u], ds.item_ids[i], float(r), int(t))
        for u, i, r, t in zip(*vars(ds.interactions).values(), strict=True)
    }
    back_rows = {
        (back.user_ids[u], back.item_ids[i], float(r), int(t))
        for u, i, r, t in zip(*vars(back.interactions).values(), strict=True)
    }
    assert rows == back_rows


def test_temporal_split_exact() -> None:
    inter = Interactions(
        user=np.array([0, 0, 0, 0, 0, 1, 1, 2]),
        item=np.array([10, 11, 12, 13, 14, 20, 21, 30]),
        rating=np.ones(8, dtype=np.float32),
        timestamp=np.array([5, 1, 4, 2, 3, 9, 8, 1]),
    )
    train, held = temporal_split(inter, 0.4)
    # user 0: 5 events -> 2 latest held out (t=4, t=5); user 1: 2 events -> 1; user 2: 1 event -> kept in train
    assert train.item.tolist() == [11, 13, 14, 21, 30]
    assert held.item.tolist() == [12, 10, 20]
    offsets, items = user_histories(train, 3)
    assert offsets.tolist() == [0, 3, 4, 5]
    assert items.tolist() == [11, 13, 14, 21, 30]


def test_synthetic_is_deterministic_and_structured() -> None:
    config = SyntheticConfig(n_users=400, n_items=300, n_genres=6, n_clusters=4, mean_interactions=20)
    a, b = generate_synthetic(config, seed=3), generate_synthetic(config, seed=3)
    assert np.array_equal(a.interactions.item, b.interactions.item)
    assert np.array_equal(a.interactions.timestamp, b.interactions.timestamp)
    c = generate_synthetic(config, seed=4)
    assert not np.array_equal(a.interactions.item[:50], c.interactions.item[:50])
    counts = np.sort(np.bincount(a.interactions.item, minlength=300))[::-1]
    # A long tail: the top 10% of items take over 30% of interactions, well above the bottom half's share.
    assert counts[:30].sum() > 0.3 * counts.sum()
    assert counts[:30].sum() > 1.5 * counts[-150:].sum()
    assert set(np.unique(a.interactions.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert a.item_dense[:, :6].sum(axis=1).min() >= 1  # every item has a genre
    per_user = np.bincount(a.interactions.user, minlength=400)
    assert per_user.min() >= 5
    assert (np.diff(a.interactions.timestamp[a.interactions.user == 0]) >= 0).all()


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_real_ml100k() -> None:
    ds = load_movielens(ML100K)
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (943, 1682, 100_000)
    assert ds.user_categorical_cardinalities == [8, 3, 22]
    assert len(implicit(ds, 4.0).interactions) == 55_375
