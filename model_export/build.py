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
from model_export.data import Dataset, Interactions, implicit, stratified_random_split, temporal_split, user_histories
from model_export.evaluate import evaluate
from model_export.export_onnx import ParityError, export, export_fp16, parity
from model_export.train import (
    embed_items,
    embed_users,
    item_neighbours,
    item_popularity,
    ranker_examples,
    seed_everything,
    train_ranker,
    train_two_tower,
)
from service import bundle as files
from service.bundle import load_bundle
from service.features import RANKER_CONTEXT_FEATURES, history_windows
from service.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    version: str
    metrics: dict[str, Any]


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def build_bundle(
    raw: Dataset,
    config: ExportConfig,
    out_dir: Path,
    progress: bool = True,
    split: tuple[Interactions, Interactions] | None = None,
    evaluate_bundle: bool = True,
) -> BuildResult:
    """Train, export and write a bundle. `split` (train, held out) of `implicit(raw, config.min_rating)` replaces
    the default temporal split; the held-out part is only used for the validation metrics in the manifest."""
    started = time.perf_counter()
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    dataset = implicit(raw, config.min_rating)
    text_model, texts = None, []
    if config.two_tower.text_features:
        from model_export.text import embed_texts, item_texts, load_encoder

        text_model, texts = load_encoder(), item_texts(dataset)
        dataset = replace(dataset, item_text=embed_texts(text_model, texts))
    train, heldout = split or temporal_split(dataset.interactions, config.holdout_fraction)
    if config.two_tower.history_sampling == "sequential":
        tt_train, rank_events = temporal_split(train, config.ranker.window_fraction)
    else:
        tt_train, rank_events = stratified_random_split(train, 1.0 - config.ranker.window_fraction, config.seed)
    log.info(
        "%s: %d users, %d items, %d positives (%d train, %d held out)",
        dataset.name,
        dataset.n_users,
        dataset.n_items,
        len(dataset.interactions),
        len(train),
        len(heldout),
    )

    user_tower, item_tower, tt_history = train_two_tower(dataset, tt_train, config, progress, validation=rank_events)
    item_embeddings = embed_items(item_tower, dataset)
    # Popularity as known before the ranker's labels (tt_train), so labels are not counted in their features.
    examples = ranker_examples(
        dataset,
        train,
        rank_events,
        user_tower,
        item_embeddings,
        item_popularity(tt_train, dataset.n_items),
        item_neighbours(tt_train, dataset.n_users, dataset.n_items, config.ranker.neighbours),
        config,
    )
    # What the service sees: statistics of all training data.
    popularity = item_popularity(train, dataset.n_items)
    neighbours = item_neighbours(train, dataset.n_users, dataset.n_items, config.ranker.neighbours)
    ranker, ranker_losses = train_ranker(dataset, examples, examples.dense.shape[1], config, progress)
    if config.two_tower.refit and len(rank_events):
        # The ranker needed a two-tower model that never saw its labels; serving wants one that saw the most
        # recent interactions too. Retrain on all training data for the epochs validation chose.
        recalls = tt_history["validation_recall@50"]
        best_epochs = int(np.argmax(recalls)) + 1 if recalls else config.two_tower.epochs
        seed_everything(config.seed)
        user_tower, item_tower, refit_history = train_two_tower(dataset, train, config, progress, epochs=best_epochs)
        tt_history["refit_loss"] = refit_history["loss"]
        item_embeddings = embed_items(item_tower, dataset)

    offsets, history = user_histories(train, dataset.n_users)
    L = config.two_tower.history_length
    writer = BundleWriter(out_dir)
    try:
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
        models: list[tuple[str, nn.Module, dict[str, np.ndarray], str]] = [
            (files.USER_TOWER, user_tower, user_inputs, "user_embedding"),
            (files.ITEM_TOWER, item_tower, item_inputs, "item_embedding"),
            (files.RANKER, ranker, ranker_inputs, "score"),
        ]
        fp16_parities = {}
        for name, module, inputs, output in models:
            model = name.removesuffix(".onnx")
            export(module, inputs, output, writer.path(name))
            parities[model] = parity(module, writer.path(name), inputs)
            if model in files.FP16_MODELS:  # the per-request models, for the GPU: where float16 holds parity
                try:
                    fp16_parities[model] = export_fp16(
                        module, inputs, output, writer.path(files.variant_name(model, "fp16"))
                    )
                except ParityError as e:
                    log.warning("no float16 %s (float32 serves on the GPU too): %s", model, e)
        if text_model is not None:
            from model_export.text import export_text_encoder

            parities["text_encoder"] = export_text_encoder(
                text_model, [texts[i] for i in sample_items[:256]], writer.tmp
            )
        log.info("ONNX parity (max abs diff): %s; float16 variants: %s", parities, fp16_parities)

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
        writer.array(files.USER_CATEGORICAL, dataset.user_categorical)
        writer.array(files.HISTORY_OFFSETS, offsets)
        writer.array(files.HISTORY_ITEMS, history)
        writer.json(files.ITEM_IDS, dataset.item_ids)
        writer.json(files.USER_IDS, dataset.user_ids)
        writer.json(files.ITEM_TITLES, dataset.item_titles)

        created = datetime.now(UTC).replace(microsecond=0)
        version = f"{dataset.name}-{created:%Y%m%dT%H%M%SZ}-{writer.content_hash()}"
        fields: dict[str, Any] = {
            "bundle_version": version,
            "created_at": created,
            "code_version": code_version(),
            "dataset": {
                "name": dataset.name,
                "n_users": dataset.n_users,
                "n_items": dataset.n_items,
                "n_ratings": len(raw.interactions),
                "n_positives": len(dataset.interactions),
                "n_train": len(train),
                "n_heldout": len(heldout),
                "split": f"per user, latest {config.holdout_fraction:.0%} of positives held out",
            },
            "dims": {
                "n_users": dataset.n_users,
                "n_items": dataset.n_items,
                "embedding_dim": config.two_tower.embedding_dim,
                "history_length": L,
                "user_categorical_cardinalities": dataset.user_categorical_cardinalities,
                "item_dense_dim": dataset.item_dense.shape[1],
                "ranker_dense_dim": examples.dense.shape[1],
                "item_neighbours": config.ranker.neighbours,
                "text_dim": dataset.text_dim,
            },
            "feature_spec": {
                "positive_rule": dataset.positive_rule,
                "user_categorical": dataset.user_categorical_names,
                "item_dense": dataset.item_dense_names,
                "ranker_dense": dataset.item_dense_names + list(RANKER_CONTEXT_FEATURES),
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
                    {"item_text": "float32 (B, text_dim): text_encoder.onnx of the item's text"}
                    if dataset.text_dim
                    else {}
                ),
                "item_text": "model_export.text.item_texts: '<title>. Genres: <g1>, <g2>.'; text_encoder.onnx "
                "(input_ids, attention_mask from tokenizer.json, truncated to 128 tokens) -> L2-normalised"
                if dataset.text_dim
                else "none",
                "ranker_inputs": {
                    "user_idx": "int64 (N,)",
                    "item_idx": "int64 (N,)",
                    "user_categorical": "int64 (N, U)",
                    "dense": "float32 (N, ranker_dense_dim): service.features.ranker_dense_features",
                },
                "unknown_user": "user tower with user_idx = n_users, empty history, unknown categoricals",
            },
            "index": index_info,
            "onnx_parity_max_abs_diff": parities,
            "onnx_fp16_parity_max_abs_diff": fp16_parities,
            "training": {
                "config": config.to_dict(),
                "two_tower": tt_history,
                "ranker_loss": ranker_losses,
                "ranker_examples": len(examples.label),
                "seconds": round(time.perf_counter() - started, 1),
            },
            "metrics": {},
        }
        writer.write_manifest(fields)

        # Evaluate the bundle as the service will run it (ONNX Runtime + FAISS, CPU), then record the metrics.
        metrics: dict[str, Any] = {}
        if evaluate_bundle:
            pipeline = Pipeline.open(load_bundle(writer.tmp), device="cpu", intra_op_threads=0)
            metrics = evaluate(pipeline, heldout, config.num_candidates, progress)
            protocol = "held-out positives, seen items excluded, full ranking over the catalogue"
            fields["metrics"] = {"validation": metrics, "protocol": protocol}
            writer.write_manifest(fields)
        path = writer.finish(version)
    except BaseException:
        writer.abort()
        raise
    log.info("wrote bundle %s in %.1fs", path, time.perf_counter() - started)
    return BuildResult(path=path, version=version, metrics=metrics)
