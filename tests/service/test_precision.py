"""The ONNX models' precision (float32 / float16 variants) and IO binding: chosen per device, same answers."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core import device as runtime
from service.core.bundle import MANIFEST, BundleError, load_bundle
from service.core.device import io_binding_device, model_precisions, open_session
from service.core.settings import Settings
from service.recommend.pipeline import Pipeline, Query

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


def answers(pipeline: Pipeline, users: list[int], k: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    embeddings = pipeline.encode(np.array(users))
    out = []
    for row, user in enumerate(users):
        recs = pipeline.recommend(user, embeddings[row], k, 200)
        out.append((recs.items, recs.ranking_scores))
    return out


def test_auto_is_float32_without_io_binding_until_verified_on_a_gpu(tiny_bundle: Path) -> None:
    """`auto` runs only what has passed scripts/gpu-check.sh on a GPU: float32 and plain run() on CUDA too."""
    assert not runtime.GPU_FAST_PATHS_VERIFIED
    bundle = load_bundle(tiny_bundle)
    assert model_precisions(bundle, CUDA, "auto") == {"user_tower": "fp32", "ranker": "fp32"}
    assert model_precisions(bundle, CUDA, "fp16") == {"user_tower": "fp16", "ranker": "fp16"}  # opted in


def test_precision_per_device_and_setting(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "GPU_FAST_PATHS_VERIFIED", True)  # what auto becomes once verified
    bundle = load_bundle(tiny_bundle)
    fp16, fp32 = {"user_tower": "fp16", "ranker": "fp16"}, {"user_tower": "fp32", "ranker": "fp32"}
    assert model_precisions(bundle, CUDA, "auto") == fp16  # the GPU: float16 where the bundle has it
    assert model_precisions(bundle, CPU, "auto") == fp32  # the CPU: float16 would only add casts
    assert model_precisions(bundle, CUDA, "fp32") == fp32
    assert model_precisions(bundle, CPU, "fp16") == fp16
    # A model whose float16 variant failed parity at export stays float32 on the GPU.
    partial = bundle.manifest.model_copy(update={"onnx_fp16_parity_max_abs_diff": {"user_tower": 1e-3}})
    mixed = replace(bundle, manifest=partial)
    assert model_precisions(mixed, CUDA, "auto") == {"user_tower": "fp16", "ranker": "fp32"}
    with pytest.raises(BundleError, match=r"onnx_precision=fp16 but the bundle has no float16 ranker"):
        model_precisions(mixed, CPU, "fp16")


def test_int8_variants_serve_where_validation_held_close_to_float32_and_refused_when_missing(
    tiny_bundle: Path,
) -> None:
    bundle = load_bundle(tiny_bundle)
    assert set(bundle.manifest.onnx_int8_parity) == {"user_tower", "ranker"}  # every build writes them
    assert all(p["pearson"] > 0.9 for p in bundle.manifest.onnx_int8_parity.values())
    assert bundle.manifest.onnx_int8_served == []  # the tiny preset does not try (serve_int8=False)
    assert model_precisions(bundle, CPU, "auto") == {"user_tower": "fp32", "ranker": "fp32"}
    # auto, on the CPU: int8 for the models the export found to hold validation quality; never on CUDA.
    held = replace(bundle, manifest=bundle.manifest.model_copy(update={"onnx_int8_served": ["ranker"]}))
    assert model_precisions(held, CPU, "auto") == {"user_tower": "fp32", "ranker": "int8"}
    assert model_precisions(held, CUDA, "auto") == {"user_tower": "fp32", "ranker": "fp32"}
    assert model_precisions(held, CPU, "fp32") == {"user_tower": "fp32", "ranker": "fp32"}
    assert Pipeline.open(held, device="cpu").onnx_precisions == {"user_tower": "fp32", "ranker": "int8"}
    assert model_precisions(bundle, CPU, "int8") == {"user_tower": "int8", "ranker": "int8"}
    before = replace(bundle, manifest=bundle.manifest.model_copy(update={"onnx_int8_parity": {}}))
    with pytest.raises(BundleError, match=r"onnx_precision=int8 but the bundle has no int8 user_tower, ranker"):
        model_precisions(before, CPU, "int8")
    full = Pipeline.open(bundle, device="cpu", precision="fp32")
    quantised = Pipeline.open(bundle, device="cpu", precision="int8")
    assert quantised.onnx_precisions == {"user_tower": "int8", "ranker": "int8"}
    users = list(range(0, bundle.manifest.dims.n_users, 7))
    embeddings, embeddings32 = quantised.encode(np.array(users)), full.encode(np.array(users))
    assert not np.array_equal(embeddings, embeddings32)  # int8 weights: another model
    assert np.mean(np.sum(embeddings * embeddings32, axis=1)) > 0.95  # ... pointing the same way
    overlap = [
        len(np.intersect1d(items, items32)) / len(items32)
        for (items, _), (items32, _) in zip(answers(quantised, users), answers(full, users), strict=True)
    ]
    assert np.mean(overlap) > 0.7, np.mean(overlap)  # mostly the same top 10


def test_float16_models_give_the_float32_answers(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    full = Pipeline.open(bundle, device="cpu", precision="fp32")
    half = Pipeline.open(bundle, device="cpu", precision="fp16")
    assert half.onnx_precisions == {"user_tower": "fp16", "ranker": "fp16"}
    users = list(range(0, bundle.manifest.dims.n_users, 7))
    embeddings = half.encode(np.array(users))
    np.testing.assert_allclose(embeddings, full.encode(np.array(users)), atol=1e-2)
    assert not np.array_equal(embeddings, full.encode(np.array(users)))  # float16 inside: not the same model
    agreement = []
    for (items, scores), (items32, scores32) in zip(answers(half, users), answers(full, users), strict=True):
        agreement.append(len(np.intersect1d(items, items32)) / len(items32))
        np.testing.assert_allclose(np.sort(scores), np.sort(scores32), atol=1e-2)
    assert np.mean(agreement) >= 0.9


def test_io_binding_gives_the_same_answers(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    plain = Pipeline.open(bundle, device="cpu", io_binding="off")
    bound = Pipeline.open(bundle, device="cpu", io_binding="on")
    assert plain.ranker._bind is None
    assert bound.ranker._bind == "cpu"
    assert bound.encoder._bind == "cpu"
    users = list(range(0, bundle.manifest.dims.n_users, 5))
    np.testing.assert_array_equal(bound.encode(np.array(users)), plain.encode(np.array(users)))
    for (items, scores), (items_p, scores_p) in zip(answers(bound, users), answers(plain, users), strict=True):
        np.testing.assert_array_equal(items, items_p)
        np.testing.assert_array_equal(scores, scores_p)
    # Several users in one call, as micro-batching runs them (cache misses encoded in the batch).
    queries = [Query(u, None, 10, 200) for u in users]
    for recs, recs_p in zip(bound.recommend_batch(queries), plain.recommend_batch(queries), strict=True):
        np.testing.assert_array_equal(recs.items, recs_p.items)
        np.testing.assert_array_equal(recs.ranking_scores, recs_p.ranking_scores)


def test_io_binding_where(tiny_bundle: Path) -> None:
    session = open_session(tiny_bundle / "ranker.onnx", CPU, 1)
    assert io_binding_device(session, "auto") is None  # on the CPU IO binding buys nothing: plain run()
    assert io_binding_device(session, "on") == "cpu"
    assert io_binding_device(session, "off") is None


def test_a_float16_variant_listed_but_missing_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["files"]["ranker.fp16.onnx"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"files lists no entry for ranker\.fp16\.onnx"):
        load_bundle(copy)


def test_a_bundle_without_float16_variants_serves_float32(tiny_bundle: Path, tmp_path: Path) -> None:
    """Bundles built before the float16 variants (schema 2, without the field) still load: auto serves float32,
    fp16 is refused. A schema 2 manifest that names variants is not a schema 2 manifest."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["schema_version"] = 2
    del manifest["content"], manifest["similar_items"], manifest["candidates"]  # schema 5's and 6's
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="onnx_fp16_parity_max_abs_diff needs schema_version 3, not 2"):
        load_bundle(copy)
    del manifest["onnx_fp16_parity_max_abs_diff"]
    for name in ("user_tower.fp16.onnx", "ranker.fp16.onnx"):
        del manifest["files"][name]
        (copy / name).unlink()
    (copy / MANIFEST).write_text(json.dumps(manifest))
    bundle = load_bundle(copy)
    assert bundle.manifest.schema_version == 2
    assert model_precisions(bundle, CUDA, "auto") == {"user_tower": "fp32", "ranker": "fp32"}
    with pytest.raises(BundleError, match="onnx_precision=fp16 but the bundle has no float16 user_tower, ranker"):
        Pipeline.open(bundle, device="cpu", precision="fp16")


def test_the_service_reports_and_uses_its_precision(settings: Settings) -> None:
    update = {"device": "cpu", "onnx_precision": "fp16", "ort_io_binding": "on"}
    with TestClient(create_app(settings.model_copy(update=update))) as c:
        assert c.get("/readyz").json()["onnx_precisions"] == {"user_tower": "fp16", "ranker": "fp16"}
        assert 'onnx_precision="fp16"' in c.get("/metrics").text
        response = c.post("/v1/recommendations", json={"user_id": "1", "k": 5})
        assert response.status_code == 200
        assert len(response.json()["items"]) == 5
    with TestClient(create_app(settings.model_copy(update={"device": "cpu"}))) as c:
        assert c.get("/readyz").json()["onnx_precisions"] == {"user_tower": "fp32", "ranker": "fp32"}
