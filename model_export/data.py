"""Interaction data: MovieLens loaders, a synthetic generator, the implicit-feedback rule and the split.

Positive rule (implicit feedback): an explicit rating at or above `min_rating` (4 of 5 stars by default)
is a positive interaction; a lower rating is negative feedback (the item counts as seen: never recommended
to that user, but it is not part of their history); unobserved items are unlabelled, not negatives. Every
item of the catalogue stays recommendable whether or not it has positives.

Users and items are re-indexed to 0..n-1 in order of first appearance in the id lists; raw ids are strings.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from model_export.config import SyntheticConfig
from service.recommend.features import year_feature

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# MovieLens 1M's age codes, also used to bucket ml-100k's exact ages.
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)
YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


class DataError(Exception):
    """A data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays, one row per interaction; `user` and `item` are indices."""

    user: np.ndarray  # (N,) int64
    item: np.ndarray  # (N,) int64
    rating: np.ndarray  # (N,) float32
    timestamp: np.ndarray  # (N,) int64, seconds

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> Interactions:
        return Interactions(self.user[rows], self.item[rows], self.rating[rows], self.timestamp[rows])


@dataclass(frozen=True)
class Dataset:
    name: str
    interactions: Interactions
    user_ids: list[str]
    item_ids: list[str]
    item_titles: list[str]
    item_dense: np.ndarray  # (n_items, D) float32: genre multi-hot, then release year scaled to [0, 1]
    item_dense_names: list[str]
    user_categorical: np.ndarray  # (n_users, U) int64, 0 = unknown
    user_categorical_names: list[str]
    user_categorical_cardinalities: list[int]
    positive_rule: str = "all interactions"
    # (n_items, T) float32: each item's text through a pretrained sentence encoder (model_export.text); set by
    # the exporter when text features are on, else (n_items, 0).
    item_text: np.ndarray | None = None
    # Per item, text beyond its title and genres (the contract's description and other text columns), which the
    # text encoder reads after them; None: none.
    item_descriptions: list[str] | None = None
    # When the data was read from the service's database (Unix seconds; None: from files). In the manifest
    # (`dataset.read_at`): the service masks in the bundle only users deleted after it (service.store.forgotten).
    read_at: float | None = None

    @property
    def text_dim(self) -> int:
        return 0 if self.item_text is None else int(self.item_text.shape[1])

    def text_of(self, items: np.ndarray) -> np.ndarray:
        """(B, T) float32 text features of `items` ((B, 0) without text)."""
        if self.item_text is None:
            return np.zeros((len(items), 0), dtype=np.float32)
        text: np.ndarray = self.item_text[items]
        return text

    @property
    def has_text(self) -> bool:
        """Whether any item has text for the text encoder: a title other than its id, categories, a description.
        A log without an items table has none (an id is no text: its embedding would be noise)."""
        if any(t != i for t, i in zip(self.item_titles, self.item_ids, strict=True)):
            return True
        if any(n.startswith("genre:") for n in self.item_dense_names):
            return True
        return any(self.item_descriptions or [])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


# --------------------------------------------------------------------------- parsing helpers


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def _rows(path: Path, sep: str, n_fields: int, encoding: str = "latin-1") -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a separated file, skipping blank lines; wrong field counts raise."""
    with _require(path).open(encoding=encoding, newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) < n_fields:
                raise DataError(f"{path}:{lineno}: expected {n_fields} {sep!r}-separated fields, got {len(fields)}")
            yield lineno, fields


def _csv_rows(path: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    with _require(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None or tuple(first[: len(header)]) != header:
            raise DataError(f"{path}:1: expected header {','.join(header)}, got {','.join(first or [])!r}")
        for fields in reader:
            if not fields:
                continue
            if len(fields) < len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(fields)}")
            yield reader.line_num, fields


def _convert(path: Path, lineno: int, name: str, value: str, fn: Callable[[str], float | int]) -> float | int:
    try:
        return fn(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: field {name!r} is not a number: {value!r}") from None


def _rating(path: Path, lineno: int, fields: list[str]) -> tuple[str, str, float, int]:
    """(user id, item id, rating, timestamp) from the first four fields of a ratings line."""
    rating = float(_convert(path, lineno, "rating", fields[2], float))
    return fields[0], fields[1], rating, int(_convert(path, lineno, "timestamp", fields[3], int))


def _age_bucket(age: int) -> int:
    """Index 1..7 of the MovieLens 1M age bucket (0 is reserved for unknown)."""
    return int(np.searchsorted(AGE_BUCKETS, age, side="right"))


def _parse_year(title: str, date: str = "") -> int | None:
    match = YEAR_RE.search(title.strip())
    if match:
        return int(match.group(1))
    tail = date.strip()[-4:]
    return int(tail) if tail.isdigit() else None


def _index_ratings(
    raw: list[tuple[str, str, float, int]], item_ids: list[str], user_ids: list[str] | None, path: Path
) -> tuple[Interactions, list[str]]:
    """Turn (user id, item id, rating, ts) rows into index arrays; unknown item ids are an error."""
    item_index = {v: i for i, v in enumerate(item_ids)}
    if user_ids is None:
        user_ids = list(dict.fromkeys(r[0] for r in raw))
    user_index = {v: i for i, v in enumerate(user_ids)}
    unknown_items = {r[1] for r in raw} - item_index.keys()
    if unknown_items:
        raise DataError(f"{path}: {len(unknown_items)} item ids not in the item file, e.g. {sorted(unknown_items)[:3]}")
    unknown_users = {r[0] for r in raw} - user_index.keys()
    if unknown_users:
        raise DataError(f"{path}: {len(unknown_users)} user ids not in the user file, e.g. {sorted(unknown_users)[:3]}")
    interactions = Interactions(
        user=np.fromiter((user_index[r[0]] for r in raw), dtype=np.int64, count=len(raw)),
        item=np.fromiter((item_index[r[1]] for r in raw), dtype=np.int64, count=len(raw)),
        rating=np.fromiter((r[2] for r in raw), dtype=np.float32, count=len(raw)),
        timestamp=np.fromiter((r[3] for r in raw), dtype=np.int64, count=len(raw)),
    )
    return interactions, user_ids


def _genre_matrix(item_genres: list[list[str]], vocabulary: list[str], years: list[int | None]) -> np.ndarray:
    column = {g: j for j, g in enumerate(vocabulary)}
    dense = np.zeros((len(item_genres), len(vocabulary) + 1), dtype=np.float32)
    for i, genres in enumerate(item_genres):
        for g in genres:
            dense[i, column[g]] = 1.0
        dense[i, -1] = year_feature(years[i])
    return dense


# --------------------------------------------------------------------------- MovieLens formats


def load_ml100k(directory: Path) -> Dataset:
    """MovieLens 100K: `u.data` (tab-separated), `u.item` and `u.user` (`|`-separated, latin-1)."""
    directory = Path(directory)
    item_ids: list[str] = []
    titles: list[str] = []
    years: list[int | None] = []
    genres: list[list[str]] = []
    path = directory / "u.item"
    for lineno, f in _rows(path, "|", 5 + len(ML100K_GENRES)):
        item_ids.append(f[0])
        titles.append(f[1])
        years.append(_parse_year(f[1], f[2]))
        flags = f[5 : 5 + len(ML100K_GENRES)]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{path}:{lineno}: genre flags must be 0 or 1, got {flags}")
        genres.append([g for g, flag in zip(ML100K_GENRES, flags, strict=True) if flag == "1"])

    user_ids: list[str] = []
    occupations: dict[str, int] = {}
    cat_rows: list[tuple[int, int, int]] = []
    path = directory / "u.user"
    for lineno, f in _rows(path, "|", 5):
        user_ids.append(f[0])
        age = int(_convert(path, lineno, "age", f[1], int))
        gender = {"M": 1, "F": 2}.get(f[2], 0)
        occupation = occupations.setdefault(f[3], len(occupations) + 1)
        cat_rows.append((_age_bucket(age), gender, occupation))

    path = directory / "u.data"
    raw = [_rating(path, lineno, f) for lineno, f in _rows(path, "\t", 4)]
    interactions, user_ids = _index_ratings(raw, item_ids, user_ids, path)
    return Dataset(
        name="ml-100k",
        interactions=interactions,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_dense=_genre_matrix(genres, list(ML100K_GENRES), years),
        item_dense_names=[f"genre:{g}" for g in ML100K_GENRES] + ["release_year"],
        user_categorical=np.array(cat_rows, dtype=np.int64).reshape(len(user_ids), 3),
        user_categorical_names=["age_bucket", "gender", "occupation"],
        user_categorical_cardinalities=[len(AGE_BUCKETS) + 1, 3, len(occupations) + 1],
    )


def _genre_vocabulary(item_genres: list[list[str]]) -> list[str]:
    return sorted({g for genres in item_genres for g in genres})


def load_ml1m(directory: Path) -> Dataset:
    """MovieLens 1M/10M: `ratings.dat`, `movies.dat` and (1M) `users.dat`, `::`-separated."""
    directory = Path(directory)
    item_ids: list[str] = []
    titles: list[str] = []
    genres: list[list[str]] = []
    for _, f in _rows(directory / "movies.dat", "::", 3):
        item_ids.append(f[0])
        titles.append(f[1])
        genres.append([g for g in f[2].split("|") if g and g != "(no genres listed)"])
    users_path = directory / "users.dat"
    user_ids: list[str] | None = None
    cat_rows: list[tuple[int, int, int]] = []
    if users_path.is_file():
        user_ids = []
        for lineno, f in _rows(users_path, "::", 5):
            user_ids.append(f[0])
            age = int(_convert(users_path, lineno, "age", f[2], int))
            occupation = int(_convert(users_path, lineno, "occupation", f[3], int))
            cat_rows.append((_age_bucket(age), {"M": 1, "F": 2}.get(f[1], 0), occupation + 1))
    path = directory / "ratings.dat"
    raw = [_rating(path, lineno, f) for lineno, f in _rows(path, "::", 4)]
    interactions, user_ids = _index_ratings(raw, item_ids, user_ids, path)
    vocabulary = _genre_vocabulary(genres)
    years = [_parse_year(t) for t in titles]
    if cat_rows:
        user_cat = np.array(cat_rows, dtype=np.int64)
        names, cards = ["age_bucket", "gender", "occupation"], [len(AGE_BUCKETS) + 1, 3, 22]
    else:
        user_cat, names, cards = np.zeros((len(user_ids), 0), dtype=np.int64), [], []
    return Dataset(
        name="ml-1m" if cat_rows else "ml-10m",
        interactions=interactions,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_dense=_genre_matrix(genres, vocabulary, years),
        item_dense_names=[f"genre:{g}" for g in vocabulary] + ["release_year"],
        user_categorical=user_cat,
        user_categorical_names=names,
        user_categorical_cardinalities=cards,
    )


def load_ml_csv(directory: Path) -> Dataset:
    """MovieLens latest-small / 25M / 32M: `ratings.csv` and `movies.csv` with headers (no user features)."""
    directory = Path(directory)
    item_ids: list[str] = []
    titles: list[str] = []
    genres: list[list[str]] = []
    for _, f in _csv_rows(directory / "movies.csv", ("movieId", "title", "genres")):
        item_ids.append(f[0])
        titles.append(f[1])
        genres.append([g for g in f[2].split("|") if g and g != "(no genres listed)"])
    path = directory / "ratings.csv"
    raw = [_rating(path, lineno, f) for lineno, f in _csv_rows(path, ("userId", "movieId", "rating", "timestamp"))]
    interactions, user_ids = _index_ratings(raw, item_ids, None, path)
    vocabulary = _genre_vocabulary(genres)
    return Dataset(
        name="movielens-csv",
        interactions=interactions,
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
        item_dense=_genre_matrix(genres, vocabulary, [_parse_year(t) for t in titles]),
        item_dense_names=[f"genre:{g}" for g in vocabulary] + ["release_year"],
        user_categorical=np.zeros((len(user_ids), 0), dtype=np.int64),
        user_categorical_names=[],
        user_categorical_cardinalities=[],
    )


def load_movielens(directory: Path) -> Dataset:
    """Detect the MovieLens format in `directory` by its files and load it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found")
    if (directory / "u.data").is_file():
        return load_ml100k(directory)
    if (directory / "ratings.dat").is_file():
        return load_ml1m(directory)
    if (directory / "ratings.csv").is_file():
        return load_ml_csv(directory)
    raise DataError(
        f"{directory}: no MovieLens files found (expected u.data for ml-100k, ratings.dat for ml-1m, "
        "or ratings.csv for ml-latest-small / ml-25m)"
    )


def write_movielens_csv(
    dataset: Dataset, interactions: Interactions, directory: Path, items: np.ndarray | None = None
) -> None:
    """`interactions` (indices into `dataset`) as a MovieLens download in the csv layout (`ratings.csv`,
    `movies.csv`, as ml-latest-small; no user features), which `load_movielens` reads back. `items`: the item
    indices `movies.csv` lists (default: all)."""
    listed = np.ones(dataset.n_items, dtype=bool) if items is None else np.isin(np.arange(dataset.n_items), items)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    genre_columns = [
        (j, n.removeprefix("genre:")) for j, n in enumerate(dataset.item_dense_names) if n.startswith("genre:")
    ]
    with (directory / "movies.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movieId", "title", "genres"])
        for i, (item_id, title) in enumerate(zip(dataset.item_ids, dataset.item_titles, strict=True)):
            if not listed[i]:
                continue
            genres = "|".join(g for j, g in genre_columns if dataset.item_dense[i, j] > 0) or "(no genres listed)"
            writer.writerow([item_id, title, genres])
    with (directory / "ratings.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for u, i, r, t in zip(
            interactions.user, interactions.item, interactions.rating, interactions.timestamp, strict=True
        ):
            writer.writerow([dataset.user_ids[u], dataset.item_ids[i], f"{r:g}", int(t)])


# --------------------------------------------------------------------------- synthetic data


def generate_synthetic(config: SyntheticConfig, seed: int = 0) -> Dataset:
    """A deterministic catalogue and interaction log with the structure real logs have.

    Items and users belong to latent taste clusters; each cluster prefers a few genres; item popularity
    follows a Zipf law; each user's interaction count is log-normal; a user's interest drifts from their
    main cluster toward a secondary one over time, so recent history predicts the future better than
    old history; ratings (1-5) grow with user-item affinity.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items, n_genres, n_clusters = (
        config.n_users,
        config.n_items,
        config.n_genres,
        config.n_clusters,
    )
    dim = 16
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)  # (C, dim)
    genre_pref = rng.dirichlet(np.full(n_genres, 0.3), size=n_clusters)  # (C, G)

    item_cluster = rng.integers(0, n_clusters, size=n_items)
    item_vec = centers[item_cluster] + 0.6 * rng.normal(size=(n_items, dim)).astype(np.float32)  # (I, dim)
    ranks = rng.permutation(n_items) + 1
    log_pop = (-config.popularity_exponent * np.log(ranks)).astype(np.float32)  # (I,)
    genres = np.zeros((n_items, n_genres), dtype=np.float32)
    for i in range(n_items):
        k = 1 + rng.binomial(2, 0.4)
        genres[i, rng.choice(n_genres, size=k, replace=False, p=genre_pref[item_cluster[i]])] = 1.0
    years = rng.integers(1950, 2025, size=n_items)

    user_cluster = rng.integers(0, n_clusters, size=n_users)
    second_cluster = (user_cluster + rng.integers(1, n_clusters, size=n_users)) % n_clusters
    user_main = centers[user_cluster] + 0.6 * rng.normal(size=(n_users, dim)).astype(np.float32)
    user_second = centers[second_cluster] + 0.6 * rng.normal(size=(n_users, dim)).astype(np.float32)
    counts = np.clip(
        rng.lognormal(np.log(config.mean_interactions) - 0.32, 0.8, size=n_users).astype(np.int64),
        5,
        n_items // 2,
    )
    # User features correlated with taste: age bucket from the cluster (noisy), gender at random.
    age = np.where(rng.random(n_users) < 0.7, user_cluster % len(AGE_BUCKETS), rng.integers(0, 7, n_users)) + 1
    gender = rng.integers(1, 3, size=n_users)

    users, items, ratings, stamps = [], [], [], []
    start = int(datetime(2020, 1, 1).timestamp())
    scale = 1.0 / np.sqrt(dim)
    for u in range(n_users):
        n = int(counts[u])
        taste = 0.75 * user_main[u] + 0.25 * user_second[u]
        affinity = (item_vec @ taste) * scale  # (I,)
        gumbel = rng.gumbel(size=n_items).astype(np.float32)
        chosen = np.argpartition(-(affinity + log_pop + gumbel), n)[:n]
        # Order in time by drift toward the secondary interest, with noise.
        drift = (item_vec[chosen] @ (user_second[u] - user_main[u])) * scale + rng.normal(size=n)
        chosen = chosen[np.argsort(drift)]
        times = start + np.sort(rng.integers(0, 365 * 86400, size=n))
        a = affinity[chosen]
        z = (a - affinity.mean()) / (affinity.std() + 1e-6)
        rating = np.clip(np.rint(2.6 + 0.9 * z + 0.7 * rng.normal(size=n)), 1, 5)
        users.append(np.full(n, u))
        items.append(chosen)
        ratings.append(rating)
        stamps.append(times)

    genre_names = [f"g{j:02d}" for j in range(n_genres)]
    titles = [
        f"Item {i + 1} ({', '.join(g for g, on in zip(genre_names, genres[i], strict=True) if on)}; {years[i]})"
        for i in range(n_items)
    ]
    item_dense = np.concatenate([genres, ((years - 1900) / 130.0).astype(np.float32)[:, None]], axis=1)
    return Dataset(
        name="synthetic",
        interactions=Interactions(
            user=np.concatenate(users).astype(np.int64),
            item=np.concatenate(items).astype(np.int64),
            rating=np.concatenate(ratings).astype(np.float32),
            timestamp=np.concatenate(stamps).astype(np.int64),
        ),
        user_ids=[str(u + 1) for u in range(n_users)],
        item_ids=[str(i + 1) for i in range(n_items)],
        item_titles=titles,
        item_dense=item_dense.astype(np.float32),
        item_dense_names=[f"genre:{g}" for g in genre_names] + ["release_year"],
        user_categorical=np.stack([age, gender], axis=1).astype(np.int64),
        user_categorical_names=["age_bucket", "gender"],
        user_categorical_cardinalities=[len(AGE_BUCKETS) + 1, 3],
    )


# --------------------------------------------------------------------------- implicit feedback and splits


def pair_codes(interactions: Interactions, n_items: int) -> np.ndarray:
    """One int64 code per (user, item) row: user * n_items + item. (N,)"""
    codes: np.ndarray = interactions.user * n_items + interactions.item
    return codes


def positives(interactions: Interactions, n_items: int, min_rating: float) -> Interactions:
    """Rows with rating >= min_rating, de-duplicated per (user, item) keeping the first (by time), in log order."""
    keep = np.flatnonzero(interactions.rating >= min_rating)
    order = keep[np.lexsort((keep, interactions.timestamp[keep], interactions.user[keep]))]
    _, first = np.unique(pair_codes(interactions.take(order), n_items), return_index=True)
    return interactions.take(order[np.sort(first)])


def negative_feedback(interactions: Interactions, n_items: int, min_rating: float) -> Interactions:
    """The (user, item) pairs of `interactions` with no positive among them (every rating below `min_rating`):
    negative feedback, as the service's `dislike` event: never recommended, not part of the history. One row per
    pair (its first), in log order."""
    positive = np.unique(pair_codes(positives(interactions, n_items, min_rating), n_items))
    rest = interactions.take(np.flatnonzero(~np.isin(pair_codes(interactions, n_items), positive)))
    return positives(rest, n_items, -np.inf)


def unseen(interactions: Interactions, seen: Interactions, n_items: int) -> Interactions:
    """The rows of `interactions` whose (user, item) does not occur in `seen`."""
    return interactions.take(np.flatnonzero(~np.isin(pair_codes(interactions, n_items), pair_codes(seen, n_items))))


def implicit(dataset: Dataset, min_rating: float) -> Dataset:
    """Keep positives only (rating >= min_rating), de-duplicated per (user, item) keeping the first."""
    return replace(
        dataset,
        interactions=positives(dataset.interactions, dataset.n_items, min_rating),
        positive_rule=f"explicit rating >= {min_rating:g} is a positive; a lower rating is negative feedback "
        "(never recommended, not history)",
    )


def chronological(interactions: Interactions) -> np.ndarray:
    """Row order by user, then timestamp, then original position (a stable, total order)."""
    return np.lexsort((np.arange(len(interactions)), interactions.timestamp, interactions.user))


def temporal_split(interactions: Interactions, holdout_fraction: float) -> tuple[Interactions, Interactions]:
    """Per user, hold out the latest `holdout_fraction` of interactions (rounded down, at least one when the
    user has two or more); a user with a single interaction keeps it in training. Returns (train, held out),
    each sorted by user then time."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    order = chronological(interactions)
    users = interactions.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    n_held = np.where(lengths >= 2, np.maximum(1, np.floor(lengths * holdout_fraction).astype(np.int64)), 0)
    position = np.arange(len(users)) - np.repeat(starts, lengths)
    held = position >= np.repeat(lengths - n_held, lengths)
    return interactions.take(order[~held]), interactions.take(order[held])


def stratified_random_split(
    interactions: Interactions, train_fraction: float, seed: int
) -> tuple[Interactions, Interactions]:
    """Per user, a random `train_fraction` of interactions (rounded) for training, the rest held out, as in
    Microsoft Recommenders' `python_stratified_split`. Returns (train, held out), each sorted by user then time."""
    rng = np.random.default_rng(seed)
    order = chronological(interactions)
    users = interactions.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    keys = rng.random(len(users))
    position = np.empty(len(users), dtype=np.int64)
    for start, length in zip(starts, lengths, strict=True):
        position[start : start + length] = np.argsort(np.argsort(keys[start : start + length]))
    n_train = np.rint(lengths * train_fraction).astype(np.int64)
    is_train = position < np.repeat(n_train, lengths)
    return interactions.take(order[is_train]), interactions.take(order[~is_train])


def user_histories(interactions: Interactions, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets (n_users + 1,), items) of each user's interactions, oldest first."""
    order = chronological(interactions)
    counts = np.bincount(interactions.user, minlength=n_users)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return offsets, interactions.item[order].astype(np.int64)
