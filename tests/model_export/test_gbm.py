"""The gradient-boosted ranker (model_export.gbm): it learns the signal that ranks each event's positive, and
its ONNX export scores as LightGBM does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_export.config import GbmConfig
from model_export.export_onnx import ParityError
from model_export.gbm import _split_thresholds, export_gbm, train_gbm
from model_export.train import RankerExamples


def planted(n_events: int, per_event: int, seed: int) -> RankerExamples:
    """Each event: its positive first, then negatives; feature 0 is higher for the positive (noisily), feature 1
    is noise, feature 2 is a popularity-like feature that favours negatives."""
    rng = np.random.default_rng(seed)
    m = n_events * per_event
    label = np.zeros((n_events, per_event), dtype=np.float32)
    label[:, 0] = 1.0
    dense = rng.normal(size=(m, 3)).astype(np.float32)
    dense[:, 0] += 1.5 * label.reshape(-1)
    dense[:, 2] -= 0.5 * label.reshape(-1)
    groups = np.arange(m, dtype=np.int64).reshape(n_events, per_event)
    zeros = np.zeros(m, dtype=np.int64)
    return RankerExamples(zeros, zeros, np.zeros((m, 0), np.int64), dense, label.reshape(-1), groups)


def positive_first_share(scores: np.ndarray, n_events: int, per_event: int) -> float:
    return float((scores.reshape(n_events, per_event).argmax(axis=1) == 0).mean())


def test_learns_the_planted_signal_and_its_onnx_export_scores_the_same(tmp_path: Path) -> None:
    train, test = planted(600, 12, seed=0), planted(300, 12, seed=1)
    booster, info = train_gbm(train, GbmConfig(trees=80, min_data_in_leaf=20, threads=1), seed=0)
    assert 1 <= info["trees"] <= 80
    assert info["events"] == 600
    assert info["examples"] == 600 * 12
    path = tmp_path / "ranker_gbm.onnx"
    diff = export_gbm(booster, test.dense, path)
    assert diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["dense"]
    assert [o.name for o in session.get_outputs()] == ["score"]
    scores = session.run(None, {"dense": test.dense})[0].reshape(-1)
    # Random order puts the positive first in 1 of 12 events; the planted feature alone in about 3 of 4.
    assert positive_first_share(scores, 300, 12) > 0.5
    assert positive_first_share(-test.dense[:, 0], 300, 12) < 0.05  # the opposite order fails the same check


def test_parity_failure_is_reported(tmp_path: Path) -> None:
    train = planted(200, 8, seed=0)
    booster, _ = train_gbm(train, GbmConfig(trees=20, min_data_in_leaf=10, threads=1), seed=0)
    with pytest.raises(ParityError, match="differs from LightGBM"):
        export_gbm(booster, train.dense, tmp_path / "m.onnx", tolerance=-1.0)


def test_a_threshold_rounded_up_to_a_feature_value_keeps_lightgbm_s_side(tmp_path: Path) -> None:
    """Feature 0 takes two adjacent float32 values a < b: LightGBM splits midway (float64), which float32 rounds up
    to b (round half to even); unfixed, ONNX Runtime sent every b the other way (scores 2.2 off)."""
    examples = planted(400, 10, seed=0)
    a = np.nextafter(np.float32(1), np.float32(2))
    b = np.nextafter(a, np.float32(2))
    dense = examples.dense.copy()
    dense[:, 0] = np.where(examples.label == 1, b, a)
    flip = np.random.default_rng(0).random(len(dense)) < 0.2
    dense[flip, 0] = np.where(dense[flip, 0] == a, b, a)
    examples = replace(examples, dense=dense)
    booster, _ = train_gbm(examples, GbmConfig(trees=20, min_data_in_leaf=10, threads=1), seed=0)
    split = [t for t in _split_thresholds(booster) if a < t < b]
    assert split  # the split between them, which float32 rounds up to b
    assert np.float32(split[0]) == b
    assert export_gbm(booster, dense, tmp_path / "m.onnx") < 1e-5
