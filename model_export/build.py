"""The offline pipeline: data -> split -> train both models -> ONNX (parity-checked) -> FAISS -> bundle -> evaluate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from torch import nn

from model_export.build_index import build_index, recall_vs_exact
from model_export.bundle import BundleWriter, code_version
from model_export.config import ExportConfig
from model_export.data import (
    Dataset,
    Interactions,
    implicit,
    negative_feedback,
    positives,
    stratified_random_split,
    temporal_split,
    unseen,
    user_histories,
)
from model_export.evaluate import choose_depth, choose_int8, choose_ranking, choose_similarity, evaluate
from model_export.export_onnx import ParityError, export, export_fp16, export_int8, parity
from model_export.gbm import export_gbm, train_gbm
from model_export.ranker import DCNRanker
from model_export.train import (
    ItemNeighbours,
    ItemPopularity,
    RankerExamples,
    embed_items,
    embed_users,
    item_popularity,
    item_transitions,
    neighbour_weights,
    ranker_examples,
    seed_everything,
    train_ranker,
    train_two_tower,
)
from model_export.two_tower import ItemTower, UserTower
from service.core import bundle as files
from service.core.bundle import Bundle, load_bundle
from service.items.content import ContentWeights, content_vectors
from service.recommend.features import GBM_EXTRA_FEATURES, RANKER_CONTEXT_FEATURES, history_windows
from service.recommend.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    version: str
    metrics: dict[str, Any]
    fitted: Fitted | None = None  # what a later build of the same recipe on more data can reuse (`reuse`)


@dataclass(frozen=True)
class Fitted:
    """A build's model selection, for a build of the same recipe on the same data plus newer events (a retrain:
    the gate's build, then the bundle's on everything; `build_bundle(reuse=...)`)."""

    models: Models  # the model-selection fit: trained on the training part of its split
    stats: ItemStats  # the item statistics of what its towers saw
    best_epochs: int  # the two-tower epochs chosen
    validation: Validation | None  # its validation's choices (ordering, depth, int8, similar items)
    seen_until: np.ndarray  # (n_users,) int64: each user's latest event time its towers saw (int64 min: none)

    def unseen(self, interactions: Interactions) -> np.ndarray:
        """(N,) bool: the events its towers never saw, each strictly after its user's latest one they saw (a user
        new since: all of theirs)."""
        seen_until = np.full(max(len(self.seen_until), int(interactions.user.max(initial=-1)) + 1), NEVER)
        seen_until[: len(self.seen_until)] = self.seen_until
        new: np.ndarray = interactions.timestamp > seen_until[interactions.user]
        return new


NEVER = np.iinfo(np.int64).min


@dataclass
class Models:
    """The three trained models, with what the manifest records of their training."""

    user_tower: UserTower
    item_tower: ItemTower
    ranker: DCNRanker
    examples: RankerExamples  # the ranker's training examples (parity inputs, dense width)
    training: dict[str, Any]
    gbm: Any = None  # the gradient-boosted ranker (a LightGBM booster; model_export.gbm), when trained
    gbm_parity_rows: np.ndarray | None = None  # (n, F) float32: real candidates' features, its ONNX parity inputs


@dataclass(frozen=True)
class ItemStats:
    """The rankers' item statistics over some interactions: popularity, neighbours and transitions."""

    popularity: ItemPopularity
    neighbours: ItemNeighbours
    transitions: ItemNeighbours | None  # what follows what (the gradient-boosted ranker's), None without it


def _item_stats(interactions: Interactions, dataset: Dataset, config: ExportConfig) -> ItemStats:
    return ItemStats(
        item_popularity(interactions, dataset.n_items),
        neighbour_weights(interactions, dataset.n_users, dataset.n_items, config.ranker),
        item_transitions(interactions, dataset.n_items, config.gbm.transitions) if config.gbm.enabled else None,
    )


@dataclass(frozen=True)
class ServingData:
    """The interactions a bundle serves from besides its models: its histories, seen sets and item statistics."""

    positives: Interactions  # histories
    negatives: Interactions  # negative feedback only: seen (never recommended), not history
    stats: ItemStats  # of `positives`


FIT_MODES = ("all", "split")


class Timer:
    """Seconds per build stage (the manifest's training.stage_seconds, printed by `train`): `lap(stage)` adds
    the time since the previous lap to `stage`; `lap()` only restarts the clock."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str | None = None) -> None:
        now = time.perf_counter()
        if stage is not None:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def rounded(self) -> dict[str, float]:
        return {stage: round(seconds, 1) for stage, seconds in self.seconds.items()}


def validation_sample(heldout: Interactions, n_users: int, seed: int) -> Interactions:
    """The held-out interactions of at most `n_users` users (a seeded sample; 0 or fewer users: all)."""
    users = np.unique(heldout.user)
    if n_users <= 0 or len(users) <= n_users:
        return heldout
    chosen = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    return heldout.take(np.flatnonzero(np.isin(heldout.user, chosen)))


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def _window(train: Interactions, config: ExportConfig) -> tuple[Interactions, Interactions]:
    """(two-tower data, ranker label events) of `train`: the latest `window_fraction` of each user's events (a
    random share for shuffled histories) are the ranker's labels, which the two-tower model never sees."""
    if config.two_tower.history_sampling == "sequential":
        return temporal_split(train, config.ranker.window_fraction)
    return stratified_random_split(train, 1.0 - config.ranker.window_fraction, config.seed)


def _ranker_then_refit(
    dataset: Dataset,
    data: Interactions,
    rank_events: Interactions,
    towers: tuple[UserTower, ItemTower],
    features_as_of: ItemStats,
    seen: Interactions,
    config: ExportConfig,
    epochs: int,
    progress: bool,
    timer: Timer,
) -> Models:
    """The ranker learns on `rank_events` (part of `data`) with the scores of `towers`, which never saw them, and
    `features_as_of`: the item statistics of what the towers saw (as of before the labels); then the two-tower
    model is retrained on all of `data` for `epochs` (serving wants one that saw the latest events)."""
    user_tower, item_tower = towers
    timer.lap()
    item_embeddings = embed_items(item_tower, dataset)  # both rankers' examples
    examples = ranker_examples(
        dataset,
        data,
        rank_events,
        user_tower,
        item_embeddings,
        features_as_of.popularity,
        features_as_of.neighbours,
        config,
        seen=seen,
    )
    ranker, ranker_losses = train_ranker(dataset, examples, examples.dense.shape[1], config, progress)
    timer.lap("ranker")
    info: dict[str, Any] = {"ranker_loss": ranker_losses, "ranker_examples": len(examples.label)}
    gbm, gbm_rows = None, None
    if config.gbm.enabled:
        g = config.gbm
        # Its events' candidates as the service draws them for it: the two-tower's, item-item and transition tops.
        drawn_as_served = replace(
            config,
            item_item_candidates=g.item_item_candidates,
            popular_candidates=g.popular_candidates,
            ranker=replace(
                config.ranker,
                hard_negatives=g.hard_negatives,
                item_item_negatives=g.item_item_negatives,
                uniform_negatives=g.uniform_negatives,
                popular_negatives=g.popular_negatives,
                negative_depth=g.negative_depth,
            ),
        )
        gbm_examples = ranker_examples(
            dataset,
            data,
            rank_events,
            user_tower,
            item_embeddings,
            features_as_of.popularity,
            features_as_of.neighbours,
            drawn_as_served,
            seen=seen,
            gbm_features=True,
            transitions=features_as_of.transitions,
            transition_candidates=g.transition_candidates,
            transition_negatives=g.transition_negatives,
        )
        gbm, info["gbm"] = train_gbm(gbm_examples, g, config.seed)
        gbm_rows = gbm_examples.dense[_sample(len(gbm_examples.label), 2048, np.random.default_rng(config.seed))]
        timer.lap("gbm_ranker")
    if config.two_tower.refit:
        seed_everything(config.seed)
        user_tower, item_tower, refitted = train_two_tower(dataset, data, config, progress, epochs=epochs)
        timer.lap("two_tower_refit")
        info["two_tower_refit_loss"] = refitted["loss"]
    return Models(user_tower, item_tower, ranker, examples, info, gbm, gbm_rows)


def build_bundle(
    raw: Dataset,
    config: ExportConfig,
    out_dir: Path,
    progress: bool = True,
    split: tuple[Interactions, Interactions] | None = None,
    evaluate_bundle: bool = True,
    fit: str = "all",
    make_current: bool = True,
    reuse: Fitted | None = None,
) -> BuildResult:
    """Train, export and write a bundle from `raw` (every interaction, whatever its rating).

    Model selection: each user's latest `holdout_fraction` of interactions (`split`, (train, held out) of
    `raw.interactions`, replaces that temporal split) is held out; the two-tower model early-stops on a validation
    window of the rest, the ranker learns on that window, and the resulting pipeline is scored on the held-out
    positives (the manifest's validation metrics). `fit="all"` (the default): the models are then refitted on
    every interaction with the chosen settings (epochs) and the bundle's histories, seen sets and item statistics
    cover all of them: what is served learns from everything it is given. `fit="split"`: the bundle is the
    model-selection fit itself, for evaluation-only bundles (the held-out part is then unknown to it).
    `make_current`: point `out_dir/current` at the new bundle (a retrain does only once it is published).

    `reuse` (a retrain's gate build of the same recipe on the events before a cut, `BuildResult.fitted`): its model
    selection stands in for this one's. Its towers score the ranker's examples on the events they never saw (each
    user's held-out part of that build, and everything since), as this build's own model-selection towers would
    score its held-out part, and the two-tower model is refitted on everything for its epochs; its validation's
    choices are served. The two-tower model is trained once, not three times."""
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    started = time.perf_counter()
    timer = Timer()
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    dataset = implicit(raw, config.min_rating)
    text_model, texts = None, []
    if config.two_tower.text_features and not dataset.has_text:
        log.info("%s: no item has text (titles are the ids): text features off", dataset.name)
        config = replace(config, two_tower=replace(config.two_tower, text_features=False))
    if config.two_tower.text_features:
        from model_export.text import embed_texts, item_texts, load_encoder

        text_model, texts = load_encoder(), item_texts(dataset)
        dataset = replace(dataset, item_text=embed_texts(text_model, texts))
        timer.lap("item_text")
    n_items = dataset.n_items
    if reuse is not None and fit == "all":  # the events its towers never saw are this build's held-out part
        new = reuse.unseen(raw.interactions)
        raw_train, raw_heldout = raw.interactions.take(np.flatnonzero(~new)), raw.interactions.take(np.flatnonzero(new))
        if not len(unseen(positives(raw_heldout, n_items, config.min_rating), raw_train, n_items)):
            log.info("no positive is new to the build reused: a model selection of its own")
            reuse = None
    if reuse is None:
        raw_train, raw_heldout = split or temporal_split(raw.interactions, config.holdout_fraction)
    train = positives(raw_train, n_items, config.min_rating)
    # Held-out positives the user had not already met in training (those are filtered out as seen).
    heldout = unseen(positives(raw_heldout, n_items, config.min_rating), raw_train, n_items)
    log.info(
        "%s: %d users, %d items, %d interactions, %d positives (%d train, %d held out)",
        dataset.name,
        dataset.n_users,
        n_items,
        len(raw.interactions),
        len(dataset.interactions),
        len(train),
        len(heldout),
    )

    if reuse is not None:
        selection, best_epochs = reuse.models, reuse.best_epochs
        tt_stats = reuse.stats
        selection_data = ServingData(train, negative_feedback(raw_train, n_items, config.min_rating), reuse.stats)
        log.info("model selection reused: %d epochs, %d events new to its towers", best_epochs, len(raw_heldout))
    else:
        # Model selection on the split: the two-tower model early-stops on the latest events of `train` (the
        # window), the ranker learns on that window, then the two-tower model is refitted on all of `train` for the
        # epochs chosen. Scoring the early-stopped towers instead (no refit: one training less) lost 2.5 % NDCG@10
        # and 6 % Recall@10 through the API on ml-100k (benchmarks.api_quality, 2026-12-07: 0.2040 / 0.1793 against
        # 0.2093 / 0.1899; one run each, inside each other's intervals): the served ranker then learns the scores of
        # towers that saw 64 % of the data, not 80 %.
        tt_train, rank_events = _window(train, config)
        timer.lap()
        user_tower, item_tower, tt_history = train_two_tower(
            dataset, tt_train, config, progress, validation=rank_events
        )
        timer.lap("two_tower_selection")
        recalls = tt_history["validation_recall@50"]
        best_epochs = int(np.argmax(recalls)) + 1 if recalls else config.two_tower.epochs
        tt_stats = _item_stats(tt_train, dataset, config)
        timer.lap("item_statistics")
        selection = _ranker_then_refit(
            dataset,
            train,
            rank_events,
            (user_tower, item_tower),
            tt_stats,
            raw_train,
            config,
            best_epochs,
            progress,
            timer,
        )
        selection.training = {"two_tower": tt_history, "best_epochs": best_epochs, **selection.training}
        selection_data = ServingData(
            train, negative_feedback(raw_train, n_items, config.min_rating), _item_stats(train, dataset, config)
        )
        timer.lap("item_statistics")

    final, final_data = selection, selection_data
    if fit == "all" and len(heldout):
        # Refit on everything: the ranker learns on the held-out part's events, scored by the model-selection
        # two-tower (which never saw them) with the item statistics of what it saw, then the two-tower model is
        # retrained on all positives for the selected epoch count.
        final = _ranker_then_refit(
            dataset,
            dataset.interactions,
            heldout,
            (selection.user_tower, selection.item_tower),
            selection_data.stats if config.two_tower.refit else tt_stats,  # what the selection towers saw
            raw.interactions,
            config,
            best_epochs,
            progress,
            timer,
        )
        final_data = ServingData(
            dataset.interactions,
            negative_feedback(raw.interactions, n_items, config.min_rating),
            _item_stats(dataset.interactions, dataset, config),
        )
        timer.lap("item_statistics")

    fields_extra = {
        "n_ratings": len(raw.interactions),
        "n_positives": len(dataset.interactions),
        "n_train": len(train),
        "n_heldout": len(heldout),
        "split": f"per user, latest {config.holdout_fraction:.0%} of interactions held out for model selection"
        if reuse is None
        else "the events the reused model selection's towers never saw held out",
        "fit": fit if final is not selection else "split",
        "served_positives": len(final_data.positives),
        "served_negative_feedback": len(final_data.negatives),
    }
    if raw.read_at is not None:
        fields_extra["read_at"] = raw.read_at
    validation: Validation | None = reuse.validation if reuse is not None else None
    if evaluate_bundle and final is not selection and reuse is None:
        # The manifest's validation metrics: the model-selection pipeline, exported and run as the service runs it,
        # on the held-out positives. A temporary bundle (no float16 variants or text encoder: not served).
        scratch = BundleWriter(out_dir)
        try:
            _write(scratch, dataset, selection, selection_data, config, rng, fields_extra, None, [], variants=False)
            timer.lap("export")
            scratch_bundle = load_bundle(scratch.tmp, verify_checksums=False)
            validation = _evaluate(scratch_bundle, train, heldout, config, progress, timer)
        finally:
            scratch.abort()
    writer = BundleWriter(out_dir)
    try:
        timer.lap()
        fields = _write(writer, dataset, final, final_data, config, rng, fields_extra, text_model, texts, validation)
        timer.lap("export")
        fields["training"] |= {
            "model_selection": selection.training
            if reuse is None
            else {"reused": "the same recipe's model selection on the events before a cut", **selection.training},
            "final": final.training if final is not selection else "the model-selection fit (fit=split)",
            "seconds": round(time.perf_counter() - started, 1),
        }
        if evaluate_bundle and final is selection:
            written = load_bundle(writer.tmp, verify_checksums=False)
            validation = _evaluate(written, train, heldout, config, progress, timer)
            fields["candidates"] |= {"ranking": validation.ranking, "depth": validation.depth}
            fields["onnx_int8_served"] = list(validation.int8)
        fields["similar_items"] = _similar_items_spec(validation.similarity if validation else None)
        fields["training"]["stage_seconds"] = timer.rounded()
        metrics: dict[str, Any] = {}
        if validation is not None:
            metrics = dict(validation.metrics)
            # Never worse than a source alone by construction: what orders the candidates is whichever of the
            # ranker and each source alone scored best on the validation split (service.recommend.pipeline).
            metrics |= {f"ranking={mode}": m for mode, m in validation.by_ranking.items()}
            metrics |= {f"depth={depth}": m for depth, m in validation.by_depth.items()}
            metrics |= {f"int8={models}": m for models, m in validation.by_int8.items()}
        if metrics:
            assert validation is not None
            fields["metrics"] = {
                "validation": metrics,
                "protocol": "held-out positives, seen items excluded, full ranking over the catalogue",
                "model": "the model-selection fit (trained without the held-out part), exported and served as the "
                "service runs it"
                + ("; the bundle is that model refitted on all interactions" if final is not selection else ""),
                "ranking": {
                    "chosen": validation.ranking,
                    "best_on_validation": validation.best,
                    "rule": "the best validation NDCG@10 of the ranker and of each candidate source alone "
                    "(ranking=<name> rows; ties go to the ranker), served with serve_best_ordering, else the ranker",
                },
                "int8": {
                    "chosen": list(validation.int8),
                    "rule": f"on the CPU, the first of both models, the ranker, the user tower whose int8 "
                    f"variants keep validation NDCG@10 at the depth served at least {1 - config.int8_tolerance:.3f}"
                    " of float32's (int8=<models> rows); none tried without serve_int8",
                },
                "depth": {
                    "chosen": validation.depth,
                    "rule": f"the fewest ANN candidates whose validation NDCG@10 under the ordering served is at "
                    f"least {1 - config.depth_tolerance:.3f} of {config.num_candidates}'s (depth=<n> rows; "
                    "candidate_recall: held-out positives among the ANN's first n)",
                },
            }
        writer.write_manifest(fields)
        path = writer.finish(fields["bundle_version"], make_current=make_current)
    except BaseException:
        writer.abort()
        raise
    log.info("wrote bundle %s in %.1fs", path, time.perf_counter() - started)
    seen_until = np.full(dataset.n_users, NEVER)
    np.maximum.at(seen_until, raw_train.user, raw_train.timestamp)
    towers_saw = selection_data.stats if config.two_tower.refit else tt_stats  # (refit: on all of `train`)
    fitted = Fitted(selection, towers_saw, best_epochs, validation, seen_until)
    return BuildResult(path=path, version=fields["bundle_version"], metrics=metrics, fitted=fitted)


@dataclass(frozen=True)
class Validation:
    """What the validation of the model-selection fit found and chose (build._evaluate)."""

    metrics: dict[str, Any]  # the pipeline's (the ranker's) and the baselines'
    similarity: dict[str, Any] | None  # the similar-items blend chosen on next-item prediction
    best: str  # the ordering best on validation
    ranking: str  # the ordering served (best, unless config.serve_best_ordering is off)
    by_ranking: dict[str, dict[str, float]]  # every ordering's metrics
    depth: int  # the ANN candidates served
    by_depth: dict[int, dict[str, float]]  # the served ordering's metrics at each depth tried
    int8: tuple[str, ...]  # the models served in int8 on the CPU
    by_int8: dict[str, dict[str, float]]  # the metrics of each choice of int8 models tried, at that depth


def _evaluate(
    bundle: Bundle, train: Interactions, heldout: Interactions, config: ExportConfig, progress: bool, timer: Timer
) -> Validation:
    """The validation of `bundle` (the model-selection fit) on `heldout`. The orderings and depths are scored on
    `config.validation_users` users (model_export.evaluate.choose_ranking, choose_depth)."""
    pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0)
    sample = validation_sample(heldout, config.validation_users, config.seed)
    metrics = evaluate(pipeline, sample, config.num_candidates, progress)
    best, by_ranking = choose_ranking(bundle, sample, config.num_candidates, progress, ranker=metrics["pipeline"])
    timer.lap("validation")
    ranking = best if config.serve_best_ordering else "ranker"
    depth, by_depth = choose_depth(
        bundle,
        sample,
        ranking,
        config.num_candidates,
        config.depth_grid,
        config.depth_tolerance,
        by_ranking[ranking],
        progress,
    )
    log.info(
        "ANN depth %d (validation NDCG@10 by depth: %s)",
        depth,
        ", ".join(f"{d} {m['ndcg@10']:.4f}" for d, m in by_depth.items() if "ndcg@10" in m),
    )
    timer.lap("depth_validation")
    int8: tuple[str, ...] = ()
    by_int8: dict[str, dict[str, float]] = {}
    if config.serve_int8:
        int8, by_int8 = choose_int8(bundle, sample, ranking, depth, config.int8_tolerance, by_depth[depth], progress)
        log.info(
            "int8 on the CPU: %s (validation NDCG@10 %s against float32's %.4f)",
            "+".join(int8) or "none",
            ", ".join(f"{models} {m['ndcg@10']:.4f}" for models, m in by_int8.items()),
            by_depth[depth]["ndcg@10"],
        )
        timer.lap("int8_validation")
    similarity = choose_similarity(pipeline, train, heldout, config.seed)
    timer.lap("similar_items_validation")
    return Validation(metrics, similarity, best, ranking, by_ranking, depth, by_depth, int8, by_int8)


def _similar_items_spec(choice: dict[str, Any] | None) -> dict[str, Any]:
    if choice is None:  # nothing to choose on: cosine alone
        return files.COSINE_ONLY.model_dump()
    share = choice["co_consumption_share"]
    return {
        "method": {0.0: "embedding cosine", 1.0: "co-consumption"}.get(share, "embedding cosine + co-consumption"),
        "embedding_weight": 1.0 - share,
        "co_consumption_weight": share,
        "candidates": files.COSINE_ONLY.candidates,
        "validation": choice["validation"],
    }


def _content(dataset: Dataset) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The trained items' content vectors (service.items.content), float16, and the manifest's `content`; None
    when the items have no content (no text, no features: an item added live goes through the item tower alone)."""
    weights = ContentWeights()
    text = dataset.item_text if dataset.item_text is not None else np.zeros((dataset.n_items, 0), np.float32)
    content = content_vectors(text, dataset.item_dense, dataset.item_dense_names, weights)
    if not content.shape[1]:
        return content.astype(np.float16), None
    spec = {
        "dim": content.shape[1],
        "text_weight": weights.text,
        "categories_weight": weights.categories,
        "year_weight": weights.year,
        "year_bucket": weights.year_bucket,
    }
    return content.astype(np.float16), spec


def _write(
    writer: BundleWriter,
    dataset: Dataset,
    models: Models,
    data: ServingData,
    config: ExportConfig,
    rng: np.random.Generator,
    dataset_fields: dict[str, Any],
    text_model: Any,
    texts: list[str],
    validation: Validation | None = None,
    variants: bool = True,
) -> dict[str, Any]:
    """Export `models` and write every bundle file into `writer`, then its manifest (without metrics); returns the
    manifest's fields. `variants`: also the float16 variants; the text encoder is exported when `text_model` is."""
    user_tower, item_tower, ranker, examples = models.user_tower, models.item_tower, models.ranker, models.examples
    item_embeddings = embed_items(item_tower, dataset)
    popularity, neighbours = data.stats.popularity, data.stats.neighbours
    offsets, history = user_histories(data.positives, dataset.n_users)
    negative_offsets, negative_items = user_histories(data.negatives, dataset.n_users)
    L = config.two_tower.history_length

    # ONNX export and parity on real inputs: users with their real histories, real items, real examples.
    def windows_of(users: np.ndarray) -> np.ndarray:
        return history_windows([history[offsets[u] : offsets[u + 1]] for u in users], L)  # (U, L)

    sample_users = _sample(dataset.n_users, 512, rng)
    user_inputs = {
        "user_idx": sample_users,
        "history": windows_of(sample_users),
        "user_categorical": dataset.user_categorical[sample_users],
    }
    sample_items = _sample(dataset.n_items, 4096, rng)
    # Real items by id, and some through the unknown-item row (content only, as for an item added live).
    item_inputs = {
        "item_idx": np.r_[sample_items, np.full(16, dataset.n_items)],
        "item_dense": dataset.item_dense[np.r_[sample_items, sample_items[:16]]],
    }
    if dataset.text_dim:
        item_inputs["item_text"] = dataset.text_of(np.r_[sample_items, sample_items[:16]])
    rows = _sample(len(examples.label), 2048, rng)
    ranker_inputs = {
        "user_idx": examples.user_idx[rows],
        "item_idx": examples.item_idx[rows],
        "user_categorical": examples.user_categorical[rows],
        "dense": examples.dense[rows],
    }
    parities = {}
    exports: list[tuple[str, nn.Module, dict[str, np.ndarray], str]] = [
        (files.USER_TOWER, user_tower, user_inputs, "user_embedding"),
        (files.ITEM_TOWER, item_tower, item_inputs, "item_embedding"),
        (files.RANKER, ranker, ranker_inputs, "score"),
    ]
    fp16_parities, int8_parities = {}, {}
    for name, module, inputs, output in exports:
        model = name.removesuffix(".onnx")
        export(module, inputs, output, writer.path(name))
        parities[model] = parity(module, writer.path(name), inputs)
        if variants and model in files.FP16_MODELS:  # the per-request models, for the GPU: where float16 holds parity
            try:
                fp16_parities[model] = export_fp16(
                    module, inputs, output, writer.path(files.variant_name(model, "fp16"))
                )
            except ParityError as e:
                log.warning("no float16 %s (float32 serves on the GPU too): %s", model, e)
        if model in files.FP16_MODELS:  # int8 weights, for the CPU (validation's choose_int8 tries them too)
            int8_parities[model] = export_int8(
                writer.path(name), writer.path(files.variant_name(model, "int8")), inputs
            )
    if models.gbm is not None and models.gbm_parity_rows is not None:
        parities["ranker_gbm"] = export_gbm(models.gbm, models.gbm_parity_rows, writer.path(files.RANKER_GBM))
    if text_model is not None and variants:
        from model_export.text import export_text_encoder

        parities["text_encoder"] = export_text_encoder(text_model, [texts[i] for i in sample_items[:256]], writer.tmp)
    log.info("ONNX parity (max abs diff): %s; float16 variants: %s; int8: %s", parities, fp16_parities, int8_parities)

    # Real user queries tune the index (IVF's nprobe) and measure its recall; the recall is measured on
    # other users than the ones that tuned it.
    query_users = _sample(dataset.n_users, 2 * config.index.recall_queries, rng)
    queries = embed_users(user_tower, query_users, windows_of(query_users), dataset.user_categorical[query_users])
    tune, check = queries[0::2], queries[1::2]
    index, index_info = build_index(item_embeddings, config.index, tune)
    index_info["recall_at"] = min(config.index.recall_at, dataset.n_items)
    index_info["recall_vs_exact"] = recall_vs_exact(index, item_embeddings, check, config.index.recall_at)
    faiss.write_index(index, str(writer.path(files.INDEX)))

    writer.array(files.ITEM_EMBEDDINGS, item_embeddings)
    writer.array(files.ITEM_DENSE, dataset.item_dense)
    writer.array(files.ITEM_LOG_POPULARITY, popularity.overall)
    writer.array(files.ITEM_RECENT_POPULARITY, popularity.recent)
    writer.array(files.ITEM_NEIGHBOURS, neighbours.items)
    writer.array(files.ITEM_NEIGHBOUR_WEIGHTS, neighbours.weights)
    transitions = data.stats.transitions if models.gbm is not None else None
    if transitions is not None:
        writer.array(files.ITEM_TRANSITIONS, transitions.items)
        writer.array(files.ITEM_TRANSITION_WEIGHTS, transitions.weights)
    writer.array(files.USER_CATEGORICAL, dataset.user_categorical)
    writer.array(files.HISTORY_OFFSETS, offsets)
    writer.array(files.HISTORY_ITEMS, history)
    writer.json(files.ITEM_IDS, dataset.item_ids)
    writer.json(files.USER_IDS, dataset.user_ids)
    writer.json(files.ITEM_TITLES, dataset.item_titles)
    writer.array(files.NEGATIVE_OFFSETS, negative_offsets)
    writer.array(files.NEGATIVE_ITEMS, negative_items)
    content, content_spec = _content(dataset)
    if content_spec is not None:
        writer.array(files.ITEM_CONTENT, content)

    created = datetime.now(UTC).replace(microsecond=0)
    fields: dict[str, Any] = {
        "bundle_version": f"{dataset.name}-{created:%Y%m%dT%H%M%SZ}-{writer.content_hash()}",
        "created_at": created,
        "code_version": code_version(),
        "dataset": {"name": dataset.name, "n_users": dataset.n_users, "n_items": dataset.n_items} | dataset_fields,
        "dims": {
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
            "embedding_dim": config.two_tower.embedding_dim,
            "history_length": L,
            "user_categorical_cardinalities": dataset.user_categorical_cardinalities,
            "item_dense_dim": dataset.item_dense.shape[1],
            "ranker_dense_dim": examples.dense.shape[1],
            "item_neighbours": config.ranker.neighbours,
            "item_transitions": transitions.items.shape[1] if transitions is not None else 0,
            "text_dim": dataset.text_dim,
        },
        "feature_spec": {
            "positive_rule": dataset.positive_rule,
            "user_categorical": dataset.user_categorical_names,
            "item_dense": dataset.item_dense_names,
            "ranker_dense": dataset.item_dense_names + list(RANKER_CONTEXT_FEATURES),
        }
        | (
            {"gbm_dense": dataset.item_dense_names + list(RANKER_CONTEXT_FEATURES) + list(GBM_EXTRA_FEATURES)}
            if models.gbm is not None
            else {}
        )
        | {
            "user_tower_inputs": {
                "user_idx": "int64 (B,): user index; n_users = unknown user",
                "history": f"int64 (B, {L}): latest items, oldest first, -1 padded",
                "user_categorical": "int64 (B, U): 0 = unknown",
            },
            "item_tower_inputs": {
                "item_idx": "int64 (B,): item index; n_items = an item added after training (content only)",
                "item_dense": "float32 (B, item_dense_dim)",
            }
            | (
                {"item_text": "float32 (B, text_dim): text_encoder.onnx of the item's text"} if dataset.text_dim else {}
            ),
            "item_text": "model_export.text.item_texts: '<title>. Genres: <g1>, <g2>.'; text_encoder.onnx "
            "(input_ids, attention_mask from tokenizer.json, truncated to 128 tokens) -> L2-normalised"
            if dataset.text_dim
            else "none",
            "ranker_inputs": {
                "user_idx": "int64 (N,)",
                "item_idx": "int64 (N,)",
                "user_categorical": "int64 (N, U)",
                "dense": "float32 (N, ranker_dense_dim): service.recommend.features.ranker_dense_features",
            },
            "unknown_user": "user tower with user_idx = n_users, empty history, unknown categoricals",
        },
        "index": index_info,
        "onnx_parity_max_abs_diff": parities,
        "onnx_fp16_parity_max_abs_diff": fp16_parities,
        "onnx_int8_parity": int8_parities,
        "onnx_int8_served": list(validation.int8) if validation else [],
        "training": {"config": config.to_dict()},
        "metrics": {},
        "content": content_spec,
        "candidates": {
            "item_item": config.item_item_candidates,
            "popular": config.popular_candidates,
            "ranking": validation.ranking if validation else "ranker",
            "depth": validation.depth if validation else config.num_candidates,
            "new_user_depth": config.num_candidates,
        }
        | (
            {
                "gbm_item_item": config.gbm.item_item_candidates,
                "gbm_transitions": config.gbm.transition_candidates,
                "gbm_popular": config.gbm.popular_candidates,
            }
            if models.gbm is not None
            else {}
        ),
    }
    writer.write_manifest(fields)
    return fields
