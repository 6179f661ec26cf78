"""Training loops for the two-tower model and the ranker (seeded, with progress bars).

Both models learn from the past only: a two-tower example is (user, history before the event, event item),
and the ranker learns on the latest `window_fraction` of each user's training events, which the two-tower
model never saw, so the two-tower score it gets as a feature is distributed as it will be when serving.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_export import distributed
from model_export.config import ExportConfig, RankerConfig, TwoTowerConfig
from model_export.data import Dataset, Interactions, chronological, pair_codes, user_histories
from model_export.ranker import DCNRanker
from model_export.two_tower import ItemTower, RetrievalTask, UserTower
from service.recommend.features import (
    TRANSITION_ITEMS,
    ItemNeighbourIndex,
    content_profiles,
    gbm_extra_features,
    history_similarity,
    history_windows,
    latest_of_windows,
    ranker_dense_features,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sequence_windows(
    interactions: Interactions, length: int, block: int = 1 << 18
) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """For every interaction, the user's `length` previous items (oldest first, right-padded with -1).

    Returns the interactions sorted by user then time, their windows (N, length) int32 and the number of
    earlier interactions of the same user (N,) int64. Built `block` rows at a time: no (N, length) temporaries
    beyond the result (at 25M interactions and length 100 the result alone is 10 GB as int64, 5 GB as int32).
    """
    ordered = interactions.take(chronological(interactions))
    n = len(ordered)
    starts = np.flatnonzero(np.r_[True, ordered.user[1:] != ordered.user[:-1]])
    n_before = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # (N,)
    items = ordered.item.astype(np.int32)
    windows = np.empty((n, length), dtype=np.int32)
    position = np.arange(length)[None, :]  # (1, L)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        kept = np.minimum(n_before[lo:hi], length)[:, None]  # (b, 1): the latest `kept` earlier rows, oldest first
        rows = np.arange(lo, hi)[:, None] - kept + position  # (b, L); the layout of features.history_window
        windows[lo:hi] = np.where(position < kept, items[np.clip(rows, 0, n - 1)], -1)
    return ordered, windows, n_before


def shuffled_windows(ordered: Interactions, length: int, rng: np.random.Generator) -> np.ndarray:
    """For every interaction of `ordered` (sorted by user), up to `length` *other* items of the same user, drawn
    at random without replacement (left-justified, -1 padded): a set-based history for data whose order does
    not predict what comes next (a random split). (N, length) int32"""
    n = len(ordered)
    starts = np.flatnonzero(np.r_[True, ordered.user[1:] != ordered.user[:-1]])
    lengths = np.diff(np.r_[starts, n])
    row_start, row_len = np.repeat(starts, lengths), np.repeat(lengths, lengths)  # (N,)
    # A random permutation within each user; each row takes the `length` rows that follow it in that
    # permutation (cyclically), so it never takes itself.
    perm = np.lexsort((rng.random(n), ordered.user))  # (N,) row indices, grouped by user
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[perm] = np.arange(n) - row_start
    offsets = np.arange(1, length + 1)[None, :]  # (1, L)
    valid = offsets < row_len[:, None]  # (N, L)
    idx = perm[row_start[:, None] + (pos_of[:, None] + offsets) % row_len[:, None]]
    return np.where(valid, ordered.item[idx], -1).astype(np.int32)


def item_log_popularity(interactions: Interactions, n_items: int) -> np.ndarray:
    """log1p(count) scaled to [0, 1] by the most popular item. (I,) float32"""
    counts = np.bincount(interactions.item, minlength=n_items).astype(np.float64)
    scaled: np.ndarray = (np.log1p(counts) / max(np.log1p(counts.max()), 1e-9)).astype(np.float32)
    return scaled


@dataclass(frozen=True)
class ItemPopularity:
    overall: np.ndarray  # (I,) float32, `item_log_popularity` of all interactions
    recent: np.ndarray  # (I,) float32, the same over the latest `recent_fraction` of them (by time)


def item_popularity(interactions: Interactions, n_items: int, recent_fraction: float = 0.1) -> ItemPopularity:
    """Popularity as of the end of `interactions`. The ranker learns from popularity as of the end of the
    two-tower training data, so that its labels (later events) are not counted in their own features."""
    if not len(interactions):
        zeros = np.zeros(n_items, dtype=np.float32)
        return ItemPopularity(zeros, zeros)
    cutoff = np.quantile(interactions.timestamp, 1.0 - recent_fraction)
    recent = interactions.take(np.flatnonzero(interactions.timestamp >= cutoff))
    return ItemPopularity(item_log_popularity(interactions, n_items), item_log_popularity(recent, n_items))


@dataclass(frozen=True)
class ItemNeighbours:
    items: np.ndarray  # (I, K) int32, each item's most similar items first, -1 padded
    weights: np.ndarray  # (I, K) float32, their cosine similarities


def item_neighbours(interactions: Interactions, n_users: int, n_items: int, k: int) -> ItemNeighbours:
    """Each item's `k` nearest items by cosine similarity of their user columns (ItemKNN's neighbourhoods),
    computed sparsely: cost grows with co-occurring pairs, not with items squared."""
    from model_export.baselines import interaction_matrix

    if not len(interactions) or not k:
        return ItemNeighbours(np.full((n_items, k), -1, dtype=np.int32), np.zeros((n_items, k), dtype=np.float32))
    x = interaction_matrix(interactions, n_users, n_items)
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    xn = x.multiply(1.0 / np.maximum(norms, 1e-9)[None, :]).tocsc()
    sim = (xn.T @ xn).tocsr()
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    return _top_per_row(sim, n_items, k)


def _top_per_row(matrix: Any, n_items: int, k: int) -> ItemNeighbours:
    """The `k` largest entries of each row of a sparse (n_items, n_items) CSR matrix, in the neighbour layout."""
    items = np.full((n_items, k), -1, dtype=np.int32)
    weights = np.zeros((n_items, k), dtype=np.float32)
    rows = np.repeat(np.arange(n_items), np.diff(matrix.indptr))
    order = np.lexsort((-matrix.data, rows))  # by row, largest first
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    top = rank < k
    keep = order[top]
    items[rows[keep], rank[top]] = matrix.indices[keep]
    weights[rows[keep], rank[top]] = matrix.data[keep]
    return ItemNeighbours(items, weights)


def item_transitions(interactions: Interactions, n_items: int, k: int, smoothing: float = 1.0) -> ItemNeighbours:
    """What follows what, in the neighbour layout: row c lists the `k` items h with the largest estimate of
    P(the next event is c | an event on h), count(h then c) / (count(h then anything) + `smoothing`), over each
    user's consecutive events in time order (a repeat of the same item skipped). Its `ItemNeighbourIndex` scores a
    candidate by the sum of those estimates over the user's latest items; `top_items` is the transition source."""
    import scipy.sparse as sp

    empty = ItemNeighbours(np.full((n_items, k), -1, dtype=np.int32), np.zeros((n_items, k), dtype=np.float32))
    if len(interactions) < 2 or not k:
        return empty
    ordered = interactions.take(chronological(interactions))
    pairs = (ordered.user[1:] == ordered.user[:-1]) & (ordered.item[1:] != ordered.item[:-1])
    before, after = ordered.item[:-1][pairs], ordered.item[1:][pairs]
    if not len(before):
        return empty
    counts = sp.csr_matrix((np.ones(len(before)), (after, before)), shape=(n_items, n_items))  # duplicates summed
    counts.sum_duplicates()
    leaving = np.bincount(before, minlength=n_items).astype(np.float64)
    counts.data = counts.data / (leaving[counts.indices] + smoothing)
    return _top_per_row(counts, n_items, k)


def item_ease(
    interactions: Interactions, n_users: int, n_items: int, k: int, regularization: float, max_items: int
) -> ItemNeighbours:
    """EASE's item-item weights (Steck, WWW 2019) in the neighbour layout: for each item c, the `k` items h with
    the largest positive weight B[h, c], so that a history's summed weights over c's list is EASE's score of c
    (its positive part). Over the `max_items` most interacted items (the closed form inverts an items x items
    matrix); other items have no list and are on none."""
    items = np.full((n_items, k), -1, dtype=np.int32)
    weights = np.zeros((n_items, k), dtype=np.float32)
    if not len(interactions) or not k:
        return ItemNeighbours(items, weights)
    from model_export.baselines import ease_weights, interaction_matrix

    counts = np.bincount(interactions.item, minlength=n_items)
    kept = np.sort(np.argsort(-counts, kind="stable")[: min(max_items, int((counts > 0).sum()))])
    b = ease_weights(interaction_matrix(interactions, n_users, n_items)[:, kept], regularization)  # b[h, c]
    depth = min(k, len(kept) - 1)
    top = np.argsort(-b, axis=0, kind="stable")[:depth].T  # (n_kept, depth): column c's largest rows
    top_weights = np.take_along_axis(b.T, top, axis=1)
    positive = top_weights > 0
    items[kept, :depth] = np.where(positive, kept[top], -1)
    weights[kept, :depth] = np.where(positive, top_weights, 0.0)
    return ItemNeighbours(items, weights)


def neighbour_weights(interactions: Interactions, n_users: int, n_items: int, config: RankerConfig) -> ItemNeighbours:
    """The ranker's item-item neighbours as `config.neighbour_weights` says (EASE or cosine)."""
    if config.neighbour_weights == "ease":
        return item_ease(
            interactions, n_users, n_items, config.neighbours, config.ease_regularization, config.ease_max_items
        )
    return item_neighbours(interactions, n_users, n_items, config.neighbours)


@dataclass
class TrainedModels:
    user_tower: UserTower
    item_tower: ItemTower
    ranker: DCNRanker
    history: dict[str, list[float]]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


def validation_recall(
    user_tower: UserTower, item_tower: ItemTower, dataset: Dataset, history: Interactions, targets: Interactions, k: int
) -> float:
    """Recall@k of the two-tower model on `targets` (full ranking, items in `history` excluded), each user's
    query built from their `history`: the early-stopping signal."""
    from model_export.baselines import interaction_matrix, top_unseen
    from model_export.evaluate import relevant_sets

    offsets, items = user_histories(history, dataset.n_users)
    users = np.unique(targets.user)
    windows = history_windows([items[offsets[u] : offsets[u + 1]] for u in users], user_tower.history_length)
    user_emb = embed_users(user_tower, users, windows, dataset.user_categorical[users])
    item_emb = embed_items(item_tower, dataset)
    seen = interaction_matrix(history, dataset.n_users, dataset.n_items)
    depth = min(k, dataset.n_items)
    chunk = max(1, 2**26 // dataset.n_items)  # users per (users x items) float64 score block: <= 512 MB
    top = np.concatenate(
        [
            top_unseen(user_emb[s : s + chunk] @ item_emb.T, seen, users[s : s + chunk], depth)
            for s in range(0, len(users), chunk)
        ]
    )
    relevant = relevant_sets(targets, dataset.n_users)
    return float(np.mean([np.isin(top[row], relevant[u]).sum() / len(relevant[u]) for row, u in enumerate(users)]))


def new_user_tower(dataset: Dataset, cfg: TwoTowerConfig) -> UserTower:
    """An untrained user tower for `dataset` as `cfg` shapes it."""
    return UserTower(
        dataset.n_users,
        dataset.n_items,
        dataset.user_categorical_cardinalities,
        cfg.id_dim,
        cfg.categorical_dim,
        cfg.hidden_dim,
        cfg.embedding_dim,
        cfg.history_length,
    )


def train_two_tower(
    dataset: Dataset,
    train: Interactions,
    config: ExportConfig,
    progress: bool = True,
    validation: Interactions | None = None,
    epochs: int | None = None,
) -> tuple[UserTower, ItemTower, dict[str, list[float]]]:
    """Train on `train`; with `validation` (the interactions that follow `train`), keep the epoch with the best
    validation Recall@50 and stop after `early_stopping_patience` epochs without improvement. In a process group
    (under torchrun, `model_export.distributed`), rank 0 calls this and every rank trains: see `serve_two_tower`."""
    group = distributed.current()
    if group is not None:
        group.share((dataset, train, config, validation, epochs))
    return _fit_two_tower(dataset, train, config, progress, validation, epochs, group)


def serve_two_tower(group: distributed.Group) -> int:
    """A rank other than 0: train each two-tower model rank 0 trains, on this rank's share of every batch."""

    def fit(
        dataset: Dataset, train: Interactions, config: ExportConfig, validation: Interactions | None, epochs: int | None
    ) -> None:
        seed_everything(config.seed + group.rank)  # (the weights come from rank 0; this seeds the dropouts)
        _fit_two_tower(dataset, train, config, False, validation, epochs, group)

    return distributed.serve(group, fit)


def _fit_two_tower(
    dataset: Dataset,
    train: Interactions,
    config: ExportConfig,
    progress: bool,
    validation: Interactions | None,
    epochs: int | None,
    group: distributed.Group | None,
) -> tuple[UserTower, ItemTower, dict[str, list[float]]]:
    cfg = config.two_tower
    ordered, windows, _ = sequence_windows(train, cfg.history_length)
    user_tower = new_user_tower(dataset, cfg)
    item_tower = ItemTower(
        dataset.n_items, dataset.item_dense.shape[1], cfg.id_dim, cfg.hidden_dim, cfg.embedding_dim, dataset.text_dim
    )
    counts = np.bincount(ordered.item, minlength=dataset.n_items).astype(np.float64) + 1e-3
    task = RetrievalTask(
        user_tower,
        item_tower,
        torch.from_numpy(np.log(counts / counts.sum())).float(),
        cfg.temperature,
        cfg.logq_correction,
        cfg.user_id_dropout,
        cfg.item_id_dropout,
        cfg.content_distillation,
    )
    optimizers = _optimizers(task, cfg)
    model: nn.Module = task
    sparse = [table.weight for table in _id_tables(task)] if cfg.sparse_embeddings else []
    if group is not None:  # the same weights on every rank (rank 0's), gradients averaged over the ranks
        task.gather_negatives = True
        model = distributed.data_parallel(task, sparse)
    users = torch.from_numpy(ordered.user)
    items = torch.from_numpy(ordered.item)
    hist = torch.from_numpy(windows)
    user_cat = torch.from_numpy(dataset.user_categorical)
    item_dense = torch.from_numpy(dataset.item_dense)
    item_text = torch.from_numpy(dataset.text_of(np.arange(dataset.n_items)))
    generator = torch.Generator().manual_seed(config.seed)
    shuffle_rng = np.random.default_rng(config.seed)
    losses: list[float] = []
    recalls: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    n_epochs = epochs or cfg.epochs
    for epoch in range(n_epochs):
        task.train()
        if cfg.history_sampling == "shuffled":
            hist = torch.from_numpy(shuffled_windows(ordered, cfg.history_length, shuffle_rng))
        batches = _batches(len(users), cfg.batch_size, generator)[: cfg.steps_per_epoch]
        total, rows = 0.0, 0  # (this rank's rows, in a process group)
        bar = tqdm(batches, desc=f"two-tower epoch {epoch + 1}/{n_epochs}", disable=not progress, leave=False)
        for b in bar:
            if group is not None:
                b = group.shard(b)
            text = item_text[items[b]] if dataset.text_dim else None
            loss = model(users[b], hist[b].long(), user_cat[users[b]], items[b], item_dense[items[b]], text)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if group is not None:
                distributed.average_sparse_gradients(sparse)
            for optimizer in optimizers:
                optimizer.step()
            total, rows = total + loss.item() * len(b), rows + len(b)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / max(rows, 1))
        task.eval()
        if validation is None or not len(validation):
            log.info("two-tower epoch %d: loss %.4f", epoch + 1, losses[-1])
            continue
        leads = group is None or group.leader
        recall = validation_recall(user_tower, item_tower, dataset, train, validation, 50) if leads else 0.0
        if group is not None:  # rank 0 measures; every rank takes the same early-stopping decision
            recall = group.broadcast_float(recall)
        recalls.append(recall)
        log.info("two-tower epoch %d: loss %.4f, validation recall@50 %.4f", epoch + 1, losses[-1], recalls[-1])
        if best is None or recalls[-1] > best[0]:
            best = (recalls[-1], epoch, copy.deepcopy(task.state_dict()))
        elif epoch - best[1] >= cfg.early_stopping_patience:
            log.info("two-tower: early stop, best epoch %d", best[1] + 1)
            break
    if best is not None:
        task.load_state_dict(best[2])
    task.eval()
    task.gather_negatives = False
    task.zero_grad(set_to_none=True)  # the last step's gradients: nothing reads them
    for table in _id_tables(task):
        table.sparse = False  # (the towers as built: dense gradients wherever they are trained next)
    return user_tower, item_tower, {"loss": losses, "validation_recall@50": recalls}


def _id_tables(task: RetrievalTask) -> list[nn.Embedding]:
    """The towers' own id tables: users and items, a few rows of each a step. (The history table is not among
    them: a step touches batch x history-length rows of it, whose sparse gradient costs more to coalesce than a
    dense update of the table.)"""
    return [task.user_tower.user_embedding, task.item_tower.item_embedding]


def _optimizers(task: RetrievalTask, cfg: TwoTowerConfig) -> list[torch.optim.Optimizer]:
    """AdamW over every weight; with `sparse_embeddings`, the id tables apart under lazy Adam (SparseAdam): a step
    then updates the rows its batch touched, not whole tables whose size grows with the users and items (at 60,000
    users and 12,000 items, AdamW's whole-table steps were about 40 % of a training step)."""
    if not cfg.sparse_embeddings:
        return [torch.optim.AdamW(task.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]
    tables = _id_tables(task)
    for table in tables:
        table.sparse = True
    sparse = {id(table.weight) for table in tables}
    dense = [p for p in task.parameters() if id(p) not in sparse]
    return [
        torch.optim.SparseAdam([table.weight for table in tables], lr=cfg.lr),
        torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
    ]


@torch.no_grad()
def embed_items(
    item_tower: ItemTower,
    dataset: Dataset,
    items: np.ndarray | None = None,
    content_only: bool = False,
    batch_size: int = 8192,
) -> np.ndarray:
    """Embeddings of `items` (default: all). `content_only`: through the unknown-item id row, from content
    (dense features and text) alone, as for an item added after training."""
    item_tower.eval()
    items = np.arange(dataset.n_items) if items is None else items
    out = []
    for start in range(0, len(items), batch_size):
        idx = items[start : start + batch_size]
        text = torch.from_numpy(dataset.text_of(idx)) if dataset.text_dim else None
        ids = torch.full((len(idx),), item_tower.unknown_item) if content_only else torch.from_numpy(idx)
        out.append(item_tower(ids, torch.from_numpy(dataset.item_dense[idx]), text).numpy())
    return np.concatenate(out).astype(np.float32)  # (I, E)


@torch.no_grad()
def embed_users(
    user_tower: UserTower,
    users: np.ndarray,
    windows: np.ndarray,
    user_categorical: np.ndarray,
    batch_size: int = 8192,
) -> np.ndarray:
    user_tower.eval()
    out = []
    for start in range(0, len(users), batch_size):
        s = slice(start, start + batch_size)
        out.append(
            user_tower(
                torch.from_numpy(users[s]),
                torch.from_numpy(windows[s]),
                torch.from_numpy(user_categorical[s]),
            ).numpy()
        )
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, user_tower.embedding_dim), np.float32)


def latest_items(windows: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each window (B, L) (oldest first, -1 padded at the end) cut to its latest `counts` (B,) items, left-justified
    as `history_window` lays them out. Returns (windows, the counts kept)."""
    length = windows.shape[1]
    present = (windows >= 0).sum(axis=1)
    counts = np.minimum(counts, present)
    columns = np.arange(length)[None, :]
    source = np.clip((present - counts)[:, None] + columns, 0, length - 1)
    cut = np.where(columns < counts[:, None], np.take_along_axis(windows, source, axis=1), -1)
    return cut.astype(np.int64), counts.astype(np.int64)


@dataclass(frozen=True)
class RankerExamples:
    user_idx: np.ndarray  # (M,) int64
    item_idx: np.ndarray  # (M,) int64
    user_categorical: np.ndarray  # (M, U) int64
    dense: np.ndarray  # (M, F) float32
    label: np.ndarray  # (M,) float32
    groups: np.ndarray  # (E, 1 + negatives) int64: each event's example rows, its positive first, -1 = dropped


def ranker_examples(
    dataset: Dataset,
    train: Interactions,
    rank_events: Interactions,
    user_tower: UserTower,
    item_embeddings: np.ndarray,
    popularity: ItemPopularity,
    neighbours: ItemNeighbours,
    config: ExportConfig,
    seen: Interactions | None = None,
    gbm_features: bool = False,
    transitions: ItemNeighbours | None = None,
    transition_candidates: int = 0,
    transition_negatives: int = 0,
) -> RankerExamples:
    """Positives are the rank-window events; negatives are uniform items and hard negatives from the two-tower
    top `hard_pool`, never items the user interacted with (in `train`, or in `seen`: every interaction, whatever
    its rating). Features come from the history before each event, built by the same functions the service uses.
    `gbm_features`: GBM_EXTRA_FEATURES follow (the gradient-boosted ranker's input), the transition scores from
    `transitions`; `transition_negatives` are drawn from the transition source's top `transition_candidates` (from
    the latest items before the event, as service.recommend.candidates draws them)."""
    cfg, length = config.ranker, config.two_tower.history_length
    rng = np.random.default_rng(config.seed + 1)
    event_codes = rank_events.user * dataset.n_items + rank_events.item
    if config.two_tower.history_sampling == "sequential":
        ordered, windows, n_before = sequence_windows(train, length)
        is_event = np.isin(ordered.user * dataset.n_items + ordered.item, event_codes)
        users, positives = ordered.user[is_event], ordered.item[is_event]
        windows, n_before = windows[is_event].astype(np.int64), n_before[is_event]
    else:  # the history of an event is every training event of its user that is not a ranker label
        before = train.take(np.flatnonzero(~np.isin(train.user * dataset.n_items + train.item, event_codes)))
        offsets, items = user_histories(before, dataset.n_users)
        users, positives = rank_events.user, rank_events.item
        windows = history_windows([items[offsets[u] : offsets[u + 1]] for u in users], length)
        n_before = (offsets[users + 1] - offsets[users]).astype(np.int64)
    # Some events as a brand-new user would be met: unknown, known by their latest few items only.
    as_new = rng.random(len(users)) < cfg.new_user_share
    if as_new.any():
        known = rng.integers(1, cfg.new_user_max_events + 1, size=int(as_new.sum()))
        windows[as_new], n_before[as_new] = latest_items(windows[as_new], np.minimum(known, n_before[as_new]))
    tower_users = np.where(as_new, dataset.n_users, users)  # the OOV rows of both models
    categorical = dataset.user_categorical[users]
    categorical[as_new] = 0
    user_emb = embed_users(user_tower, tower_users, windows, categorical)  # (E, d)
    seen_codes = np.unique(train.user * dataset.n_items + train.item)
    if seen is not None:
        seen_codes = np.union1d(seen_codes, pair_codes(seen, dataset.n_items))

    n_neg = cfg.uniform_negatives + cfg.hard_negatives + cfg.item_item_negatives + cfg.popular_negatives
    n_neg += transition_negatives
    candidates = np.empty((len(users), 1 + n_neg), dtype=np.int64)
    candidates[:, 0] = positives
    # The other candidate sources, as the service draws them (service.recommend.candidates): the item-item top from the
    # history before the event, and the most popular items.
    neighbour_index = ItemNeighbourIndex(neighbours.items, neighbours.weights)
    item_item, in_item_item = extra_source_negatives(
        neighbour_index,
        windows,
        positives,
        config.item_item_candidates,
        cfg.item_item_negatives,
        rng,
        cfg.negative_depth,
    )
    popular = np.argsort(-popularity.overall, kind="stable")[: config.popular_candidates]
    in_popular = np.isin(positives, popular)
    popular_negatives = (
        popular[rng.integers(0, len(popular), size=(len(users), cfg.popular_negatives))]
        if len(popular)
        else rng.integers(0, dataset.n_items, size=(len(users), cfg.popular_negatives))
    )
    pool = min(cfg.hard_pool, dataset.n_items)
    retrieved = np.ones(len(users), dtype=bool)  # was the positive among the `pool` retrieved candidates?
    # The two-tower top `pool` by exact search (FAISS: no (events x items) score matrix, whatever the catalogue).
    exact = faiss.IndexFlatIP(item_embeddings.shape[1])
    exact.add(np.ascontiguousarray(item_embeddings, dtype=np.float32))
    for start in range(0, len(users), 4096):
        s = slice(start, start + 4096)
        top_scores, top = exact.search(np.ascontiguousarray(user_emb[s], dtype=np.float32), pool)  # (b, pool)
        positive_scores = np.einsum("bd,bd->b", user_emb[s], item_embeddings[positives[s]])
        retrieved[s] = positive_scores >= top_scores[:, -1] - 1e-6  # float rounding at the boundary
        pick = rng.integers(0, min(pool, cfg.negative_depth or pool), size=(len(top), cfg.hard_negatives))
        candidates[s, 1 : 1 + cfg.hard_negatives] = np.take_along_axis(top, pick, axis=1)
    at = 1 + cfg.hard_negatives
    candidates[:, at : at + cfg.item_item_negatives] = item_item
    at += cfg.item_item_negatives
    candidates[:, at : at + cfg.popular_negatives] = popular_negatives
    at += cfg.popular_negatives
    candidates[:, at : at + cfg.uniform_negatives] = rng.integers(
        0, dataset.n_items, size=(len(users), cfg.uniform_negatives)
    )
    at += cfg.uniform_negatives
    retrieved |= in_item_item | in_popular  # the positive is a candidate if any source brings it
    transition_index = None if transitions is None else ItemNeighbourIndex(transitions.items, transitions.weights)
    if transition_index is not None and (transition_candidates or transition_negatives):
        following, in_following = extra_source_negatives(
            transition_index,
            latest_of_windows(windows, TRANSITION_ITEMS),
            positives,
            transition_candidates,
            transition_negatives,
            rng,
            cfg.negative_depth,
        )
        candidates[:, at:] = following
        retrieved |= in_following
    else:
        candidates[:, at:] = rng.integers(0, dataset.n_items, size=(len(users), transition_negatives))
    labels = np.zeros_like(candidates, dtype=np.float32)
    labels[:, 0] = 1.0
    # Drop negatives the user did interact with (they are positives elsewhere in the log).
    negative_seen = np.isin(users[:, None] * dataset.n_items + candidates, seen_codes)
    keep = np.ones_like(candidates, dtype=bool)
    keep[:, 1:] = ~negative_seen[:, 1:]
    if cfg.retrieved_positives_only:
        # The ranker only ever sees retrieved candidates; a positive retrieval missed would teach it that a
        # low two-tower score predicts a positive.
        keep &= retrieved[:, None]

    rows = np.repeat(np.arange(len(users)), 1 + n_neg).reshape(candidates.shape)[keep]  # (M,)
    cand = candidates[keep]
    retrieval = np.einsum("md,md->m", user_emb[rows], item_embeddings[cand])
    profiles = content_profiles(dataset.item_dense, windows)  # (E, D)
    # rows are grouped by event, in order; the features the service computes, by the same code
    neighbour = ItemNeighbourIndex(neighbours.items, neighbours.weights).scores(cand, windows, rows)  # (M, 2)
    # Some candidates as an item added live is met: the unknown-item row and none of what interactions give
    # (popularity, co-consumption neighbours), so the ranker learns to score such items from the rest.
    cold = rng.random(len(cand)) < config.two_tower.item_id_dropout
    known = (~cold if cfg.cold_item_features else np.ones(len(cand), bool)).astype(np.float32)
    dense = ranker_dense_features(
        dataset.item_dense[cand],
        retrieval,
        popularity.overall[cand] * known,
        popularity.recent[cand] * known,
        profiles[rows],
        history_similarity(item_embeddings, cand, windows[rows]),
        n_before[rows],
        neighbour * known[:, None],
    )
    if gbm_features:
        recent = gbm_extra_features(neighbour_index, transition_index, cand, windows, rows) * known[:, None]
        dense = np.concatenate([dense, recent], axis=1)
    user_idx = tower_users[rows].copy()
    dropped = rng.random(len(user_idx)) < config.two_tower.user_id_dropout
    user_idx[dropped] = dataset.n_users  # teaches the ranker's unknown-user row
    cand_idx = cand.copy()
    cand_idx[cold] = dataset.n_items  # and the unknown-item row
    groups = np.full(candidates.shape, -1, dtype=np.int64)
    groups[keep] = np.arange(int(keep.sum()))
    groups = groups[keep[:, 0]]  # events whose positive was kept
    return RankerExamples(user_idx, cand_idx, categorical[rows], dense, labels[keep], groups)


def extra_source_negatives(
    neighbours: ItemNeighbourIndex,
    windows: np.ndarray,
    positives: np.ndarray,
    depth: int,
    count: int,
    rng: np.random.Generator,
    sample_depth: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """For each event (its history window (E, L), its positive (E,)), `count` items drawn from the item-item
    source's top `depth` (what service.recommend.candidates adds from that history; uniform items where it has none),
    or from its top `sample_depth` only (0: all `depth`), and whether the positive is on the `depth` list.
    ((E, count) int64, (E,) bool)"""
    drawn = rng.integers(0, neighbours.n_items, size=(len(positives), count))
    found = np.zeros(len(positives), dtype=bool)
    if not depth:
        return drawn, found
    for e, (window, positive) in enumerate(zip(windows, positives, strict=True)):
        top, _ = neighbours.top_items(window, depth, window)
        if not len(top):
            continue
        found[e] = bool((top == positive).any())
        if count:
            drawn[e] = top[rng.integers(0, min(len(top), sample_depth or len(top)), size=count)]
    return drawn, found


def train_ranker(
    dataset: Dataset, examples: RankerExamples, dense_dim: int, config: ExportConfig, progress: bool = True
) -> tuple[DCNRanker, list[float]]:
    cfg = config.ranker
    model = DCNRanker(
        dataset.n_users,
        dataset.n_items,
        dataset.user_categorical_cardinalities,
        dense_dim,
        cfg.id_dim,
        cfg.categorical_dim,
        cfg.cross_layers,
        cfg.hidden_dims,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    tensors = [
        torch.from_numpy(a)
        for a in (
            examples.user_idx,
            examples.item_idx,
            examples.user_categorical,
            examples.dense,
            examples.label,
        )
    ]
    generator = torch.Generator().manual_seed(config.seed + 2)
    losses: list[float] = []
    model.train()
    if cfg.loss == "listwise":
        return _train_listwise(
            model, optimizer, tensors[:4], torch.from_numpy(examples.groups), cfg, generator, progress
        )
    for epoch in range(cfg.epochs):
        batches = _batches(len(examples.label), cfg.batch_size, generator)
        total = 0.0
        bar = tqdm(batches, desc=f"ranker epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for b in bar:
            u, i, c, d, y = (t[b] for t in tensors)
            loss = loss_fn(model.logits(u, i, c, d), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(b)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / len(examples.label))
        log.info("ranker epoch %d: loss %.4f", epoch + 1, losses[-1])
    model.eval()
    return model, losses


def _train_listwise(
    model: DCNRanker,
    optimizer: torch.optim.Optimizer,
    inputs: list[torch.Tensor],
    groups: torch.Tensor,
    cfg: RankerConfig,
    generator: torch.Generator,
    progress: bool,
) -> tuple[DCNRanker, list[float]]:
    """Softmax cross-entropy over each event's candidates (its positive against its negatives)."""
    losses: list[float] = []
    events_per_batch = max(1, cfg.batch_size // groups.shape[1])
    for epoch in range(cfg.epochs):
        total = 0.0
        batches = _batches(len(groups), events_per_batch, generator)
        bar = tqdm(batches, desc=f"ranker epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for b in bar:
            rows = groups[b]  # (b, 1 + n)
            valid = rows >= 0
            flat = rows[valid]
            logits = torch.full(rows.shape, float("-inf"))
            logits[valid] = model.logits(*(t[flat] for t in inputs))
            loss = nn.functional.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item() * len(b)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / max(len(groups), 1))
        log.info("ranker epoch %d: listwise loss %.4f", epoch + 1, losses[-1])
    model.eval()
    return model, losses
