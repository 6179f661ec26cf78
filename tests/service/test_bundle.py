from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.bundle import MANIFEST, BundleError, CandidatesSpec, load_bundle, sha256_file
from service.recommend.pipeline import Pipeline


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


DELETE = object()  # edit_manifest: remove the field
BEFORE_SCHEMA_6 = {"candidates": DELETE}
BEFORE_SCHEMA_5 = {"content": DELETE, "similar_items": DELETE, **BEFORE_SCHEMA_6}


def edit_manifest(path: Path, edit: dict[str, object]) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    for dotted, value in edit.items():
        node = manifest
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_valid_bundle_loads(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    dims = bundle.manifest.dims
    assert bundle.item_embeddings.shape == (dims.n_items, dims.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(bundle.item_embeddings, axis=1), 1.0, atol=1e-5)
    assert bundle.user_index[bundle.user_ids[3]] == 3
    assert bundle.manifest.metrics["validation"]["pipeline"]["users"] > 0


def test_corrupted_file_is_refused(bundle_copy: Path) -> None:
    target = bundle_copy / "ranker.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"ranker\.onnx: sha256 .* does not match the manifest"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "items.faiss").unlink()
    with pytest.raises(BundleError, match=r"items\.faiss: listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_dimension_mismatch_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, {"dims.embedding_dim": 999})
    with pytest.raises(BundleError, match=r"item_embeddings\.npy: shape .* does not match the manifest"):
        load_bundle(bundle_copy)


def test_item_count_mismatch_is_refused(bundle_copy: Path) -> None:
    n_items = json.loads((bundle_copy / MANIFEST).read_text())["dims"]["n_items"]
    edit_manifest(bundle_copy, {"dims.n_items": n_items + 1})
    with pytest.raises(BundleError, match=rf"item_ids\.json: {n_items} entries, manifest dimensions say {n_items + 1}"):
        load_bundle(bundle_copy)


def test_schema_and_manifest_errors(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"missing; is .* a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    edit_manifest(bundle_copy, {"schema_version": 99})
    with pytest.raises(
        BundleError, match=r"schema_version 99 is not supported \(this service reads schemas 2, 3, 4, 5, 6\)"
    ):
        load_bundle(bundle_copy)
    edit_manifest(bundle_copy, {"schema_version": 6, "bundle_version": "../escape"})
    with pytest.raises(BundleError, match="invalid manifest: bundle_version"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_onnx_signature_checked_against_manifest(bundle_copy: Path) -> None:
    """A model from another bundle (different dimensions) with matching checksums is still refused."""
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    cards = manifest["dims"]["user_categorical_cardinalities"]
    names = manifest["feature_spec"]["user_categorical"]
    # Pretend the user tower takes one more categorical feature: arrays and model now disagree with the manifest.
    edit_manifest(
        bundle_copy,
        {
            "dims.user_categorical_cardinalities": [*cards, 2],
            "feature_spec.user_categorical": [*names, "extra"],
        },
    )
    user_cat = np.load(bundle_copy / "user_categorical.npy", allow_pickle=False)
    np.save(
        bundle_copy / "user_categorical.npy",
        np.concatenate([user_cat, np.zeros((len(user_cat), 1), np.int64)], 1),
    )
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    path = bundle_copy / "user_categorical.npy"
    manifest["files"]["user_categorical.npy"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    bundle = load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=r"user_tower\.onnx: input 'user_categorical' has width"):
        Pipeline.open(bundle, device="cpu")


def test_negative_neighbour_weights_are_refused(bundle_copy: Path) -> None:
    """The ranker's neighbour features assume non-negative weights (cosines, or EASE's positive part)."""
    path = bundle_copy / "item_neighbour_weights.npy"
    weights = np.load(path, allow_pickle=False)
    weights[0, 0] = -0.5
    np.save(path, weights)
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"][path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"item_neighbour_weights\.npy: weights must be non-negative"):
        load_bundle(bundle_copy)


def test_transition_tables_checked_and_optional(bundle_copy: Path) -> None:
    bundle = load_bundle(bundle_copy)
    assert bundle.item_transitions is not None
    assert bundle.item_transition_weights is not None
    assert bundle.item_transitions.shape == (bundle.manifest.dims.n_items, bundle.manifest.dims.item_transitions)
    broken = bundle.item_transition_weights.copy()
    broken[0, 0] = -1.0
    _rewrite(bundle_copy, "item_transition_weights.npy", broken)
    with pytest.raises(BundleError, match=r"item_transition_weights\.npy: weights must be non-negative"):
        load_bundle(bundle_copy)
    _rewrite(bundle_copy, "item_transition_weights.npy", bundle.item_transition_weights)
    _rewrite(bundle_copy, "item_transitions.npy", np.full_like(bundle.item_transitions, bundle.manifest.dims.n_items))
    with pytest.raises(BundleError, match=r"item_transitions\.npy: item indices outside"):
        load_bundle(bundle_copy)
    # A bundle without them (dims.item_transitions 0): none loaded, the gradient-boosted ranker scores them 0.
    edit_manifest(bundle_copy, {"dims.item_transitions": 0})
    assert load_bundle(bundle_copy).item_transitions is None


def _rewrite(bundle: Path, name: str, array: np.ndarray) -> None:
    np.save(bundle / name, array)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_negative_feedback_files_checked_and_older_schemas_have_none(bundle_copy: Path) -> None:
    bundle = load_bundle(bundle_copy)
    assert len(bundle.negative_items) > 0
    user = int(np.argmax(np.diff(bundle.negative_offsets)))
    assert set(bundle.seen(user)) == set(bundle.history(user)) | set(bundle.negatives(user))
    assert not set(bundle.history(user)) & set(bundle.negatives(user))
    # Schema 4 requires the files.
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    del manifest["files"]["negative_items.npy"]
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"files lists no entry for negative_items\.npy"):
        load_bundle(bundle_copy)
    # A schema 3 bundle (before negative feedback) loads with none.
    edit_manifest(bundle_copy, {"schema_version": 3, **BEFORE_SCHEMA_5})
    old = load_bundle(bundle_copy)
    assert len(old.negative_items) == 0
    assert (old.seen(user) == old.history(user)).all()
    # Invalid CSR offsets or item indices are refused, naming the file.
    edit_manifest(bundle_copy, {"schema_version": 4})
    _rewrite(bundle_copy, "negative_items.npy", bundle.negative_items)
    _rewrite(bundle_copy, "negative_offsets.npy", bundle.negative_offsets[::-1].copy())
    with pytest.raises(BundleError, match=r"negative_offsets\.npy: offsets are not a valid CSR index"):
        load_bundle(bundle_copy)
    _rewrite(bundle_copy, "negative_offsets.npy", bundle.negative_offsets)
    _rewrite(bundle_copy, "negative_items.npy", np.full_like(bundle.negative_items, bundle.manifest.dims.n_items))
    with pytest.raises(BundleError, match=r"negative_items\.npy: item indices outside"):
        load_bundle(bundle_copy)


def test_content_vectors_and_similar_items_spec(bundle_copy: Path) -> None:
    """Schema 5: the content vectors are checked (listed, float16 of the manifest's width, finite); a schema 4
    bundle has none (items added live go through the item tower) and similar items by cosine alone."""
    bundle = load_bundle(bundle_copy)
    spec = bundle.manifest.content
    assert spec is not None
    assert bundle.item_content is not None
    assert bundle.item_content.shape == (bundle.manifest.dims.n_items, spec.dim)
    np.testing.assert_allclose(np.linalg.norm(bundle.item_content.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert spec.text_weight > spec.categories_weight > spec.year_weight > 0  # the text carries the weight
    _rewrite(bundle_copy, "item_content.npy", bundle.item_content.astype(np.float32))
    with pytest.raises(BundleError, match=r"item_content\.npy: dtype float32, expected float16"):
        load_bundle(bundle_copy)
    _rewrite(bundle_copy, "item_content.npy", bundle.item_content[:, :-1].copy())
    with pytest.raises(BundleError, match=r"item_content\.npy: shape .* does not match"):
        load_bundle(bundle_copy)
    broken = bundle.item_content.copy()
    broken[0, 0] = np.nan
    _rewrite(bundle_copy, "item_content.npy", broken)
    with pytest.raises(BundleError, match=r"item_content\.npy: content vectors must be finite"):
        load_bundle(bundle_copy)
    _rewrite(bundle_copy, "item_content.npy", bundle.item_content)
    edit_manifest(bundle_copy, {"schema_version": 4})
    with pytest.raises(BundleError, match="content needs schema_version 5, not 4"):
        load_bundle(bundle_copy)
    edit_manifest(bundle_copy, BEFORE_SCHEMA_5)
    old = load_bundle(bundle_copy)
    assert old.item_content is None
    assert old.manifest.content is None
    assert old.manifest.similar_items.co_consumption_weight == 0.0


def test_candidate_sources_spec(bundle_copy: Path) -> None:
    """Schema 6: the extra candidate sources; a schema 5 bundle retrieves from the ANN search alone."""
    manifest = load_bundle(bundle_copy).manifest
    spec = manifest.candidates
    assert (spec.item_item, spec.popular) == (0, 0)  # the defaults: off for the ranker
    assert spec.ranking == manifest.metrics["ranking"]["chosen"] == "ranker"  # the tiny preset serves the ranker
    edit_manifest(bundle_copy, {"candidates.ranking": "nonsense"})
    with pytest.raises(BundleError, match=r"invalid manifest: candidates\.ranking"):
        load_bundle(bundle_copy)
    edit_manifest(bundle_copy, {"candidates.ranking": "item_item", "candidates.popular": -1})
    with pytest.raises(BundleError, match=r"invalid manifest: candidates\.popular"):
        load_bundle(bundle_copy)
    # The gradient-boosted ranker orders only where the bundle has it.
    edit_manifest(bundle_copy, {"candidates.ranking": "gbm", "candidates.popular": 0})
    assert load_bundle(bundle_copy).manifest.candidates.gbm_item_item > 0
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    del manifest["files"]["ranker_gbm.onnx"]
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"candidates\.ranking is 'gbm' but the bundle lists no ranker_gbm\.onnx"):
        load_bundle(bundle_copy)
    edit_manifest(bundle_copy, {"schema_version": 5, "candidates.popular": 1})
    with pytest.raises(BundleError, match="candidates needs schema_version 6, not 5"):
        load_bundle(bundle_copy)
    edit_manifest(bundle_copy, BEFORE_SCHEMA_6)
    assert load_bundle(bundle_copy).manifest.candidates == CandidatesSpec(item_item=0, popular=0)
