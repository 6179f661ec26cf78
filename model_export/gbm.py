"""The gradient-boosted ranker: LightGBM lambdarank over the union of the candidate sources, exported to ONNX.

It sees the same per-candidate features as the DCN ranker (service.recommend.features.ranker_dense_features: the
two-tower score, the item-item sums EASE's weights give from the user's history, popularity overall and recent,
content, history length) and GBM_EXTRA_FEATURES (the item-item and transition scores from the user's latest 1 and 3
items), without user or item ids: a new user with three events takes the same path as a known one. It learns from
each label event's candidates as the service draws them for it (the two-tower's top, the item-item and transition
sources' tops from the history before the event, at one rate from each: model_export.train.ranker_examples), one
lambdarank group per event, and stops early on the NDCG@10 of a tenth of the events it leaves out.

onnxmltools converts the booster to ONNX's TreeEnsembleRegressor (ai.onnx.ml), which ONNX Runtime runs on its CPU
provider (a GPU session falls back to it for this operator): measured on the 2-core VM, 300 trees of 31 leaves score
700 candidates in 4.2 ms on one thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from model_export.config import GbmConfig
from model_export.export_onnx import ParityError
from model_export.train import RankerExamples

log = logging.getLogger(__name__)

ONNX_ML_OPSET = 15  # the highest main opset onnxmltools' LightGBM converter writes
# Tree sums in float32 (ONNX Runtime) against LightGBM's float64, relative to the largest score.
GBM_PARITY_TOLERANCE = 1e-4


def train_gbm(examples: RankerExamples, config: GbmConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """A LightGBM lambdarank booster on `examples` (each event's kept rows a group, its positive first). Returns
    (booster, what the manifest records: trees kept, the early-stopping NDCG@10, examples and events)."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    # Each event's rows in a random order: the positive comes first in `examples`, and LightGBM breaks score ties
    # by position, in its NDCG (early stopping) and its lambdas alike. Unshuffled, the first tree's many ties put
    # every positive on top and early stopping kept that one tree (ml-100k: 1 tree, served NDCG@10 0.1435).
    groups = np.take_along_axis(examples.groups, np.argsort(rng.random(examples.groups.shape), axis=1), axis=1)
    sizes = (groups >= 0).sum(axis=1)
    events = rng.permutation(len(groups))
    n_valid = max(1, len(groups) // 10) if len(groups) >= 20 else 0
    parts = {"valid": np.sort(events[:n_valid]), "train": np.sort(events[n_valid:])}

    def dataset(part: np.ndarray, reference: Any = None) -> Any:
        picked = groups[part]
        taken = picked[picked >= 0]
        return lgb.Dataset(
            examples.dense[taken],
            label=examples.label[taken],
            group=sizes[part],
            reference=reference,
            free_raw_data=False,
        )

    train = dataset(parts["train"])
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "lambdarank_truncation_level": 20,
        "num_threads": config.threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }
    callbacks: list[Any] = []
    valid_sets: list[Any] = []
    if n_valid:
        valid_sets = [dataset(parts["valid"], train)]
        callbacks.append(lgb.early_stopping(config.early_stopping_rounds, verbose=False))
    booster = lgb.train(params, train, num_boost_round=config.trees, valid_sets=valid_sets, callbacks=callbacks)
    best = booster.best_iteration or booster.current_iteration()
    score = booster.best_score.get("valid_0", {}).get("ndcg@10") if n_valid else None
    info = {
        "trees": int(best),
        "early_stopping_ndcg@10": None if score is None else round(float(score), 4),
        "examples": int(sizes.sum()),
        "events": len(groups),
    }
    log.info("gbm ranker: %s", info)
    return booster, info


def export_gbm(booster: Any, dense: np.ndarray, path: Path, tolerance: float = GBM_PARITY_TOLERANCE) -> float:
    """Write `booster` (its best iteration) as ONNX with one input, `dense` (N, F) float32, and one output, `score`
    (N, 1); returns the max |ONNX Runtime - LightGBM| on `dense` (real candidates' features) and raises ParityError
    above `tolerance`, relative to the scores' spread (tree sums in float32 against LightGBM's float64)."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = dense.shape[1]
    model = onnxmltools.convert_lightgbm(
        booster, initial_types=[("dense", FloatTensorType([None, width]))], target_opset=ONNX_ML_OPSET
    )
    model.graph.output[0].name = _rename(model, model.graph.output[0].name, "score")
    _round_thresholds_down(model, booster)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"dense": np.ascontiguousarray(dense, dtype=np.float32)})[0].reshape(-1)
    expected = booster.predict(dense, num_iteration=booster.best_iteration or None)
    diff = float(np.abs(actual - expected).max()) if len(dense) else 0.0
    scale = max(1.0, float(np.abs(expected).max()) if len(dense) else 1.0)
    if not diff <= tolerance * scale:
        raise ParityError(f"{path.name}: ONNX Runtime differs from LightGBM by {diff:.3g} (> {tolerance * scale:g})")
    return diff


def _rename(model: onnx.ModelProto, old: str, new: str) -> str:
    """Rename the tensor `old` to `new` wherever a node writes or reads it. Returns `new`."""
    for node in model.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    return new


def _split_thresholds(booster: Any) -> np.ndarray:
    """Every split threshold of the booster's trees (up to its best iteration), as LightGBM holds them (float64)."""
    found: list[float] = []

    def walk(node: dict[str, Any]) -> None:
        if "threshold" in node and "left_child" in node:
            found.append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model(num_iteration=booster.best_iteration or None)["tree_info"]:
        walk(tree["tree_structure"])
    return np.unique(np.array(found, dtype=np.float64))


def _round_thresholds_down(model: onnx.ModelProto, booster: Any) -> None:
    """ONNX's TreeEnsemble holds thresholds in float32, rounded to the nearest; LightGBM compares a feature with its
    float64 threshold t (`x <= t`, midway between two feature values). Where t was rounded up to a float32 v, an
    input exactly v goes left in LightGBM and right in ONNX Runtime: measured on ml-100k's tiny recipe, a score
    0.06 off. A float32 x satisfies x <= t exactly when x <= the largest float32 not above t, so each threshold
    rounded up (by every t it stands for) is replaced by the float32 just below it."""
    exact = _split_thresholds(booster)
    rounded = exact.astype(np.float32)
    up = rounded.astype(np.float64) > exact
    lower = np.setdiff1d(rounded[up], rounded[~up])  # float32 values only ever rounded up to
    for node in model.graph.node:
        if node.op_type != "TreeEnsembleRegressor":
            continue
        for attribute in node.attribute:
            if attribute.name == "nodes_values":
                values = np.array(attribute.floats, dtype=np.float32)
                fixed = np.where(np.isin(values, lower), np.nextafter(values, np.float32(-np.inf)), values)
                attribute.floats[:] = fixed.tolist()
