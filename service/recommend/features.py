"""Model input features, as pure numpy functions shared by training (`model_export`) and serving.

Keeping one implementation is what rules out training/serving skew: the exporter builds the ranker's
training examples with exactly the functions the service calls per request.

Conventions: item and user *indices* are positions in the bundle's id lists; a history is a user's
interactions oldest first; padding in a history window is -1; categorical value 0 means unknown.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

PAD = -1

# Per-candidate features the ranker sees after the item's own dense features, in this order.
RANKER_CONTEXT_FEATURES = (
    "retrieval_score",
    "item_log_popularity",
    "item_recent_popularity",
    "content_affinity",
    "history_similarity_max",
    "history_similarity_mean",
    "log_history_length",
    "neighbour_score_sum",
    "neighbour_score_max",
)

# What the gradient-boosted ranker (ranker_gbm.onnx) sees after RANKER_CONTEXT_FEATURES: the item-item source's score
# from the user's latest item and from their latest three, beside the whole window's (neighbour_score_*), and the
# transition source's (how often the candidate came next after those items in other users' histories).
GBM_EXTRA_FEATURES = (
    "neighbour_score_sum_last_1",
    "neighbour_score_max_last_1",
    "neighbour_score_sum_last_3",
    "neighbour_score_max_last_3",
    "transition_score_sum_last_1",
    "transition_score_max_last_1",
    "transition_score_sum_last_3",
    "transition_score_max_last_3",
)
RECENT_ITEMS = (1, 3)
TRANSITION_ITEMS = 3  # the transition source's candidates follow the user's latest items


YEAR_FIRST, YEAR_LAST = 1900, 2030  # year_feature's scale
UNKNOWN_YEAR_FEATURE = 0.5  # what year_feature gives an item without a year


def year_feature(year: int | None) -> float:
    """An item's release year as its last dense feature: scaled to [0, 1] over 1900..2030; 0.5 if unknown."""
    if year is None:
        return UNKNOWN_YEAR_FEATURE
    return float(np.clip((year - YEAR_FIRST) / (YEAR_LAST - YEAR_FIRST), 0.0, 1.0))


def year_of(dense: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """year_feature undone: each row's release year from its `release_year` column (names as the bundle's
    item_dense), 0 where unknown or where there is no such column. (N,) int64"""
    if "release_year" not in names:
        return np.zeros(len(dense), dtype=np.int64)
    scaled = dense[:, list(names).index("release_year")].astype(np.float64)
    known = np.abs(scaled - UNKNOWN_YEAR_FEATURE) > 1e-6
    return np.where(known, np.rint(scaled * (YEAR_LAST - YEAR_FIRST) + YEAR_FIRST), 0).astype(np.int64)


def genres_of(dense: np.ndarray, names: Sequence[str]) -> list[str]:
    """item_dense_row's genres undone: the `genre:<name>` columns set in one item's row."""
    return [n.removeprefix("genre:") for n, v in zip(names, dense, strict=True) if n.startswith("genre:") and v > 0]


UNKNOWN_NUMERIC_FEATURE = 0.5  # a `num:<column>` feature (scaled to [0, 1] at training) that an item lacks


def item_dense_row(names: Sequence[str], genres: Sequence[str], year: int | None) -> np.ndarray:
    """The dense features of one item from its genres and year, in the bundle's column order `names`
    (`genre:<name>` multi-hot, `release_year`, then `num:<column>` numeric features, unknown here: their
    midpoint); genres the bundle does not know are ignored. (D,) float32"""
    row = np.zeros(len(names), dtype=np.float32)
    wanted = {f"genre:{g}" for g in genres}
    for j, name in enumerate(names):
        if name in wanted:
            row[j] = 1.0
        elif name == "release_year":
            row[j] = year_feature(year)
        elif name.startswith("num:"):
            row[j] = UNKNOWN_NUMERIC_FEATURE
    return row


def item_text(title: str, genres: Sequence[str], description: str = "") -> str:
    """The text the pretrained sentence encoder embeds for an item: '<title>. Genres: <g1>, <g2>. <description>'."""
    text = f"{title}. Genres: {', '.join(genres)}." if genres else f"{title}."
    return f"{text} {description}".strip()


def history_window(history: np.ndarray, length: int) -> np.ndarray:
    """The latest `length` items of one history, oldest first, right-padded with -1. (length,) int64"""
    window = np.full(length, PAD, dtype=np.int64)
    recent = history[-length:] if length > 0 else history[:0]
    window[: len(recent)] = recent
    return window


def history_windows(histories: Sequence[np.ndarray], length: int) -> np.ndarray:
    """`history_window` for a batch. (B, length) int64"""
    out = np.full((len(histories), length), PAD, dtype=np.int64)
    for row, history in enumerate(histories):
        recent = history[-length:]
        out[row, : len(recent)] = recent
    return out


def latest_of_windows(windows: np.ndarray, n: int) -> np.ndarray:
    """Each window (B, L) (oldest first, -1 padded at the end, as `history_windows` lays them out) cut to its
    latest `n` items, laid out the same way. (B, n) int64"""
    present = (windows >= 0).sum(axis=1)  # (B,)
    columns = np.arange(n)[None, :]
    start = np.maximum(present - n, 0)[:, None]
    source = np.clip(start + columns, 0, max(windows.shape[1] - 1, 0))
    taken = np.take_along_axis(windows, source, axis=1) if windows.shape[1] else np.full(source.shape, PAD)
    return np.where(columns < np.minimum(present, n)[:, None], taken, PAD).astype(np.int64)


def gbm_extra_features(
    neighbours: ItemNeighbourIndex,
    transitions: ItemNeighbourIndex | None,
    candidates: np.ndarray,
    windows: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """GBM_EXTRA_FEATURES: `neighbours.scores`, then `transitions.scores` (zeros without), from each window's latest
    1 and 3 items. candidates (N,), windows (B, L), rows (N,) the window of each candidate (grouped by window, in
    order). (N, 8) float32"""
    latest = [latest_of_windows(windows, n) for n in RECENT_ITEMS]
    parts = [neighbours.scores(candidates, w, rows) for w in latest]
    if transitions is None:
        parts += [np.zeros((len(candidates), 2 * len(RECENT_ITEMS)), dtype=np.float32)]
    else:
        parts += [transitions.scores(candidates, w, rows) for w in latest]
    return np.concatenate(parts, axis=1).astype(np.float32)


def content_profiles(item_dense: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Mean dense content vector of the items in each history window (zeros for an empty one). (B, D) float32"""
    mask = windows >= 0  # (B, L)
    gathered = item_dense[np.where(mask, windows, 0)] * mask[..., None]  # (B, L, D)
    counts = np.maximum(mask.sum(axis=1, keepdims=True), 1)  # (B, 1)
    profiles: np.ndarray = (gathered.sum(axis=1) / counts).astype(np.float32)
    return profiles


def history_similarity(
    item_embeddings: np.ndarray, candidates: np.ndarray, windows: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """Max and mean cosine between each candidate's embedding and the embeddings of its user's history window
    (an item-to-item signal, like ItemKNN's); zeros for an empty window. (N, 2) float32

    candidates (N,); windows (N, L), one per candidate; or (L,) shared by all candidates (one user); or (B, L)
    with `rows` (N,), the window of each candidate, for several users' candidates at once (grouped by user, in
    order: a batch of requests). Embeddings are L2-normalised.
    """
    if windows.ndim == 1:
        return history_similarity(item_embeddings, candidates, windows[None, :], np.zeros(len(candidates), np.int64))
    out = np.zeros((len(candidates), 2), dtype=np.float32)
    if not len(candidates):
        return out
    if rows is not None:  # per user: (L, E) @ (E, n_b), one stacked matmul for the batch
        n_users = len(windows)
        mask = windows >= 0  # (B, L)
        count = mask.sum(axis=1)  # (B,)
        # Padding points at one of the user's own history items: a duplicate leaves the max unchanged, and the
        # mean is taken with the mask's weights.
        first = windows[np.arange(n_users), mask.argmax(axis=1)]  # (B,)
        history = item_embeddings[np.maximum(np.where(mask, windows, first[:, None]), 0)]  # (B, L, E)
        counts = np.bincount(rows, minlength=n_users)
        if counts.min() == counts.max():  # as many candidates each (the usual batch): no padding
            grouped = item_embeddings[candidates].reshape(n_users, counts[0], -1)
        else:
            position = np.arange(len(candidates)) - (np.cumsum(counts) - counts)[rows]
            grouped = np.zeros((n_users, counts.max(), item_embeddings.shape[1]), dtype=np.float32)
            grouped[rows, position] = item_embeddings[candidates]
        sims = np.matmul(history, grouped.transpose(0, 2, 1))  # (B, L, n)
        weights = (mask / np.maximum(count, 1)[:, None]).astype(np.float32)[:, None, :]  # (B, 1, L)
        stats = np.stack([sims.max(axis=1), np.matmul(weights, sims)[:, 0, :]], axis=-1)  # (B, n, 2)
        stats[count == 0] = 0.0
        if counts.min() == counts.max():
            return stats.reshape(len(candidates), 2)
        out[:] = stats[rows, position]
        return out
    for start in range(0, len(candidates), 4096):
        s = slice(start, start + 4096)
        mask = windows[s] >= 0  # (n, L)
        hist = item_embeddings[np.where(mask, windows[s], 0)]  # (n, L, E)
        sims = np.einsum("nle,ne->nl", hist, item_embeddings[candidates[s]])  # (n, L)
        count = mask.sum(axis=1)
        out[s, 0] = np.where(count > 0, np.where(mask, sims, -np.inf).max(axis=1, initial=-np.inf), 0.0)
        out[s, 1] = (sims * mask).sum(axis=1) / np.maximum(count, 1)
    return out


def most_similar_in_history(
    item_embeddings: np.ndarray, items: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each item, the history item (from `window`, (L,), -1 padded) whose embedding is closest, and their
    cosine: the "because you liked X" of an explanation. (N,) int64 (-1 for an empty window), (N,) float32"""
    history = window[window >= 0]
    if not len(history) or not len(items):
        return np.full(len(items), PAD, dtype=np.int64), np.zeros(len(items), dtype=np.float32)
    sims = item_embeddings[items] @ item_embeddings[history].T  # (N, h)
    best = sims.argmax(axis=1)
    return history[best].astype(np.int64), sims[np.arange(len(items)), best].astype(np.float32)


def neighbour_scores(
    neighbours: np.ndarray,
    weights: np.ndarray,
    candidates: np.ndarray,
    window: np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """ItemKNN's signal from the item co-occurrence neighbours: for each candidate, log1p of the summed
    similarity of its neighbours that are in the history window, and the largest such similarity; zeros for
    an empty window. (N, 2) float32

    neighbours (I, K) int, -1 padded, and weights (I, K) float32: each item's K most similar items;
    candidates (N,); window (L,), one user's history window (-1 padding ignored), or windows (B, L) with
    `rows` (N,), the window of each candidate, grouped by user in order (a batch of requests).
    """
    out = np.zeros((len(candidates), 2), dtype=np.float32)
    if not len(candidates) or not neighbours.shape[1]:
        return out
    windows = window[None, :] if window.ndim == 1 else window
    counts = np.bincount(rows, minlength=len(windows)) if rows is not None else np.array([len(candidates)])
    ends = np.cumsum(counts)
    # Membership by lookup in a per-catalogue mask (its last slot, which -1 padding reads, stays False):
    # about 5x faster than a sorted search at 500 candidates x 100 neighbours. One mask for the batch, set
    # and cleared per user.
    member = np.zeros(len(neighbours) + 1, dtype=bool)
    for user_window, end, count in zip(windows, ends, counts, strict=True):
        history = user_window[user_window >= 0]
        if not len(history) or not count:
            continue
        block = candidates[end - count : end]  # one user's (n, K) at a time stays in cache
        member[history] = True
        w = weights[block] * member[neighbours[block]]  # (n, K)
        member[history] = False
        out[end - count : end, 0] = np.log1p(w.sum(axis=1))
        out[end - count : end, 1] = w.max(axis=1)
    return out


class ItemNeighbourIndex:
    """`neighbour_scores` computed from the history's side: the neighbour lists inverted, so that for each item h
    the items listing h among their neighbours (and with what weight) lie together (CSR: `offsets`, `owners`,
    `weights`). A request then reads the entries of its ~L history items instead of all n x K neighbour slots of
    its candidates: at 100K items, 500 candidates x 100 slots (0.5 ms of random gathers) against ~11K entries.

    Equal to `neighbour_scores` (the definition, kept as the reference) up to float rounding, for non-negative
    weights (cosines of interaction columns; the bundle loader refuses negative ones): a candidate none of whose
    neighbours is in the window scores 0, as does one whose matches weigh 0. Built once per bundle (O(I K));
    items added live have no neighbours and are nobody's, so they need no change here. Thread-safe.
    """

    def __init__(self, neighbours: np.ndarray, weights: np.ndarray) -> None:
        n_items, k = neighbours.shape
        flat = neighbours.ravel()
        valid = np.flatnonzero(flat >= 0)
        targets = flat[valid]
        order = np.argsort(targets, kind="stable")  # by neighbour; within one, by owner
        self.owners = (valid[order] // max(k, 1)).astype(np.int32)  # (M,) the item whose list it is
        self.weights = weights.ravel()[valid[order]].astype(np.float32)  # (M,)
        self.offsets = np.zeros(n_items + 1, dtype=np.int64)  # item h's entries: offsets[h]:offsets[h + 1]
        np.cumsum(np.bincount(targets, minlength=n_items), out=self.offsets[1:])
        self.n_items = n_items
        self._local = threading.local()  # per thread: candidate position of each item, -1 elsewhere

    def _positions(self, size: int) -> np.ndarray:
        positions: np.ndarray | None = getattr(self._local, "positions", None)
        if positions is None or len(positions) < size:
            positions = np.full(max(size, self.n_items), -1, dtype=np.int32)
            self._local.positions = positions
        return positions

    def scores(self, candidates: np.ndarray, windows: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """As `neighbour_scores(neighbours, weights, candidates, windows, rows)`. (N, 2) float32"""
        out = np.zeros((len(candidates), 2), dtype=np.float32)
        if not len(candidates) or not len(self.owners):
            return out
        windows = windows[None, :] if windows.ndim == 1 else windows
        counts = np.bincount(rows, minlength=len(windows)) if rows is not None else np.array([len(candidates)])
        ends = np.cumsum(counts)
        positions = self._positions(int(candidates.max()) + 1)
        for user_window, end, count in zip(windows, ends, counts, strict=True):
            # Each history item once (membership, as in the definition); items added live have no entries.
            history = np.unique(user_window[(user_window >= 0) & (user_window < self.n_items)])
            if not len(history) or not count:
                continue
            starts = self.offsets[history]
            lengths = self.offsets[history + 1] - starts
            total = int(lengths.sum())
            if not total:
                continue
            # The entries of every history item: one index array over the concatenated segments.
            entries = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            block = candidates[end - count : end]
            unique, inverse = block, None
            positions[block] = np.arange(count, dtype=np.int32)
            if not (positions[block] == np.arange(count)).all():  # a candidate twice: score each item once
                positions[block] = -1
                unique, inverse = np.unique(block, return_inverse=True)
                positions[unique] = np.arange(len(unique), dtype=np.int32)
            at = positions[self.owners[entries]]
            positions[unique] = -1
            hit = at >= 0
            at, weight = at[hit], self.weights[entries[hit]]
            sums = np.bincount(at, weights=weight, minlength=len(unique))
            best = np.zeros(len(unique), dtype=np.float32)
            np.maximum.at(best, at, weight)
            stats = np.column_stack([np.log1p(sums), best])
            out[end - count : end] = stats if inverse is None else stats[inverse.reshape(-1)]
        return out

    def top_items(self, window: np.ndarray, n: int, blocked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The item-to-item candidate source: the `n` items with the largest (positive) summed weight from the
        window's items (each once; EASE's score of a candidate is that sum over its list), best first, none of
        `blocked`. The sum is what `scores` gives as `log1p` in its first column. ((m,) int64, (m,) float32)"""
        history = np.unique(window[(window >= 0) & (window < self.n_items)])
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if not len(history) or n <= 0:
            return empty
        starts = self.offsets[history]
        lengths = self.offsets[history + 1] - starts
        total = int(lengths.sum())
        if not total:
            return empty
        entries = np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        items, inverse = np.unique(self.owners[entries], return_inverse=True)
        sums = np.bincount(inverse.reshape(-1), weights=self.weights[entries], minlength=len(items))
        keep = sums > 0.0
        if blocked is not None and len(blocked):
            keep &= ~np.isin(items, blocked)
        items, sums = items[keep], sums[keep]
        best = np.argsort(-sums, kind="stable")[:n]
        return items[best].astype(np.int64), sums[best].astype(np.float32)


def ranker_dense_features(
    item_dense: np.ndarray,
    retrieval_score: np.ndarray,
    item_log_popularity: np.ndarray,
    item_recent_popularity: np.ndarray,
    profile: np.ndarray,
    history_sim: np.ndarray,
    history_length: np.ndarray,
    neighbour: np.ndarray,
) -> np.ndarray:
    """The ranker's dense input: item content, then `RANKER_CONTEXT_FEATURES`. (N, D + 9) float32

    item_dense (N, D); retrieval_score, popularities, history_length (N,); profile (N, D) or (D,);
    history_sim (N, 2) from `history_similarity`; neighbour (N, 2) from `neighbour_scores`. content_affinity
    is the cosine between the candidate's content and the user's history profile.
    """
    profile = np.broadcast_to(profile, item_dense.shape)
    dot = np.einsum("nd,nd->n", item_dense, profile)
    norms = np.linalg.norm(item_dense, axis=1) * np.linalg.norm(profile, axis=1)
    affinity = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    context = np.column_stack(
        [
            retrieval_score,
            item_log_popularity,
            item_recent_popularity,
            affinity,
            history_sim[:, 0],
            history_sim[:, 1],
            np.log1p(np.broadcast_to(history_length, retrieval_score.shape).astype(np.float32)),
            neighbour[:, 0],
            neighbour[:, 1],
        ]
    )  # (N, 9)
    return np.concatenate([item_dense, context], axis=1).astype(np.float32)
