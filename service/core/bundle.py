"""The model bundle: the one contract between the offline exporter and the online service.

A bundle is a directory holding `manifest.json` plus the files it lists (ONNX models, a FAISS index, numpy
arrays, JSON id maps). The manifest records every file's sha256 and the dimensions the service relies on;
`load_bundle` refuses a bundle whose manifest, checksums or dimensions disagree, with a message naming
the file and the field. Nothing in a bundle is a pickle: arrays are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.bundle_files import BundleError as BundleError  # re-exported: where callers catch it
from service.core.bundle_files import (
    index_of,
    load_array,
    load_csr,
    load_item_lists,
    load_str_list,
)

SCHEMA_VERSION = 6  # what the exporter writes
# Schemas this service reads: 4 is 5 before content vectors and similar-item weights (items added live go
# through the item tower's unknown-item row; similar items by cosine alone), 3 is 4 before negative feedback
# (no NEGATIVE_* files: no user has any), 2 is 3 before the float16 variants (no onnx_fp16_parity_max_abs_diff).
READABLE_SCHEMAS = (2, 3, 4, 5, 6)
MANIFEST = "manifest.json"

# Files every bundle of this schema holds; the manifest may list more.
USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
RANKER = "ranker.onnx"
# The gradient-boosted ranker (model_export.gbm), optional: one input, `dense` (N, ranker_dense_dim), one output.
RANKER_GBM = "ranker_gbm.onnx"
INDEX = "items.faiss"
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_DENSE = "item_dense.npy"
ITEM_LOG_POPULARITY = "item_log_popularity.npy"
ITEM_RECENT_POPULARITY = "item_recent_popularity.npy"
ITEM_NEIGHBOURS = "item_neighbours.npy"
ITEM_NEIGHBOUR_WEIGHTS = "item_neighbour_weights.npy"
USER_CATEGORICAL = "user_categorical.npy"
HISTORY_OFFSETS = "history_offsets.npy"
HISTORY_ITEMS = "history_items.npy"
# Schema 4: each user's items with negative feedback only (rated below the positive rule): seen, never
# recommended, not history. CSR like the history.
NEGATIVE_OFFSETS = "negative_offsets.npy"
NEGATIVE_ITEMS = "negative_items.npy"
# Optional (dims.item_transitions > 0): what follows what, in the neighbour layout: row c lists the items h most
# often followed by c in users' histories (the next event), with P(next is c | h); the gradient-boosted ranker's
# transition source and features (service.recommend.candidates, features.GBM_EXTRA_FEATURES).
ITEM_TRANSITIONS = "item_transitions.npy"
ITEM_TRANSITION_WEIGHTS = "item_transition_weights.npy"
# Schema 5: the trained items' content vectors (service.items.content), float16, (n_items, manifest.content.dim).
ITEM_CONTENT = "item_content.npy"
ITEM_IDS = "item_ids.json"
USER_IDS = "user_ids.json"
ITEM_TITLES = "item_titles.json"
TEXT_ENCODER = "text_encoder.onnx"  # with TOKENIZER, present when dims.text_dim > 0
TOKENIZER = "tokenizer.json"
# The models run per request, exported in float16 too (`variant_name`: the same inputs and outputs) where their
# parity held; the manifest's onnx_fp16_parity_max_abs_diff names the ones a bundle has.
FP16_MODELS = ("user_tower", "ranker")
REQUIRED_FILES = (
    USER_TOWER,
    ITEM_TOWER,
    RANKER,
    INDEX,
    ITEM_EMBEDDINGS,
    ITEM_DENSE,
    ITEM_LOG_POPULARITY,
    ITEM_RECENT_POPULARITY,
    ITEM_NEIGHBOURS,
    ITEM_NEIGHBOUR_WEIGHTS,
    USER_CATEGORICAL,
    HISTORY_OFFSETS,
    HISTORY_ITEMS,
    ITEM_IDS,
    USER_IDS,
    ITEM_TITLES,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Dimensions(_Strict):
    n_users: int = Field(ge=1)
    n_items: int = Field(ge=1)
    embedding_dim: int = Field(ge=1)
    history_length: int = Field(ge=1)
    user_categorical_cardinalities: list[int]
    item_dense_dim: int = Field(ge=0)
    ranker_dense_dim: int = Field(ge=1)
    item_neighbours: int = Field(ge=0)  # co-occurrence neighbours kept per item
    item_transitions: int = Field(0, ge=0)  # predecessors kept per item in ITEM_TRANSITIONS; 0 = no such files
    text_dim: int = Field(ge=0)  # width of the item tower's text input; 0 = no text features


class FeatureSpec(_Strict):
    """Names and meaning of every model input, so a reader needs no training code to call the models."""

    positive_rule: str
    user_categorical: list[str]
    item_dense: list[str]
    ranker_dense: list[str]
    gbm_dense: list[str] | None = None  # the gradient-boosted ranker's `dense` input, where the bundle has one
    user_tower_inputs: dict[str, str]
    item_tower_inputs: dict[str, str]
    item_text: str
    ranker_inputs: dict[str, str]
    unknown_user: str


class IndexInfo(_Strict):
    type: str
    metric: str
    params: dict[str, Any]
    recall_vs_exact: float | None = Field(ge=0.0, le=1.0)
    recall_at: int | None


class ContentSpec(_Strict):
    """The content vectors' block weights (service.items.content): an item added live with a trained item's content
    takes its place."""

    dim: int = Field(ge=1)
    text_weight: float = Field(ge=0)
    categories_weight: float = Field(ge=0)
    year_weight: float = Field(ge=0)
    year_bucket: int = Field(ge=1)


class SimilarItemsSpec(_Strict):
    """The similar-items blend (service.recommend.similar) and the validation that chose its weights."""

    method: str
    embedding_weight: float = Field(ge=0)
    co_consumption_weight: float = Field(ge=0)
    candidates: int = Field(ge=1)  # nearest items by cosine taken from the index beside the co-consumption list
    validation: dict[str, Any] = Field(default_factory=dict)


COSINE_ONLY = SimilarItemsSpec(
    method="embedding cosine", embedding_weight=1.0, co_consumption_weight=0.0, candidates=100
)


class CandidatesSpec(_Strict):
    """Candidates each source beyond the two-tower ANN search adds per request (service.recommend.candidates); schema 6.
    A bundle before it retrieves from the ANN search alone."""

    item_item: int = Field(0, ge=0)  # the items the item-item weights score highest from the user's latest items
    popular: int = Field(0, ge=0)  # the most popular items
    # How the union is ordered (service.recommend.pipeline): the ranker, the gradient-boosted ranker, or one
    # source's own score alone, whichever the exporter found best on its validation split (model_export.build).
    ranking: Literal["ranker", "gbm", "item_item", "two_tower", "popular"] = "ranker"
    # The item-item, transition and popular sources' candidates when the gradient-boosted ranker orders them.
    gbm_item_item: int = Field(0, ge=0)
    gbm_transitions: int = Field(0, ge=0)
    gbm_popular: int = Field(0, ge=0)
    # Candidates the ANN search gives per request: the fewest of the exporter's grid whose validation NDCG@10
    # stays within its tolerance of the full depth's (model_export.evaluate.choose_depth); RECO_NUM_CANDIDATES
    # overrides it. Bundles before it: 500.
    depth: int = Field(500, ge=1)
    # And for a user the bundle does not know (encoded from fresh events alone): the exporter's full depth, since
    # validation chose `depth` on known users.
    new_user_depth: int = Field(500, ge=1)


class Manifest(_Strict):
    schema_version: int
    bundle_version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    created_at: datetime
    code_version: str
    dataset: dict[str, Any]
    dims: Dimensions
    feature_spec: FeatureSpec
    index: IndexInfo
    files: dict[str, FileEntry]
    onnx_parity_max_abs_diff: dict[str, float]
    # model (user_tower, ranker) -> its float16 variant's max abs diff from the float32 PyTorch model; a model
    # missing here has no float16 variant (bundles before them have none at all).
    onnx_fp16_parity_max_abs_diff: dict[str, float] = Field(default_factory=dict)
    # model (user_tower, ranker) -> its int8 variant's distance from float32 on the export's sample inputs
    # (max_abs_diff, pearson); a model missing here has no int8 variant.
    onnx_int8_parity: dict[str, dict[str, float]] = Field(default_factory=dict)
    # The models whose int8 variant held validation NDCG@10 (model_export.evaluate.choose_int8): what
    # RECO_ONNX_PRECISION=auto serves in int8 on the CPU. Bundles before it: none.
    onnx_int8_served: list[Literal["user_tower", "ranker"]] = Field(default_factory=list)
    training: dict[str, Any]
    metrics: dict[str, Any]
    content: ContentSpec | None = None  # schema 5; None: items added live go through the item tower alone
    similar_items: SimilarItemsSpec = COSINE_ONLY  # schema 5; before it, similar items were by cosine alone
    candidates: CandidatesSpec = CandidatesSpec()  # schema 6


@dataclass(frozen=True, slots=True)
class Bundle:
    """A validated bundle, its arrays in memory. Item and user *indices* are positions in the id lists."""

    path: Path
    manifest: Manifest
    item_ids: Sequence[str]  # a list; items added live: a view of a list grown in place (service.recommend.catalogue)
    user_ids: list[str]
    item_titles: Sequence[str]
    item_index: Mapping[str, int]
    user_index: dict[str, int]
    item_embeddings: np.ndarray  # (n_items, d) float32, L2-normalised
    item_dense: np.ndarray  # (n_items, item_dense_dim) float32
    item_log_popularity: np.ndarray  # (n_items,) float32, log1p(count) / max, over the training data
    item_recent_popularity: np.ndarray  # (n_items,) float32, the same over its latest 10 %
    item_neighbours: np.ndarray  # (n_items, item_neighbours) int32, strongest first, -1 padded
    item_neighbour_weights: np.ndarray  # (n_items, item_neighbours) float32 >= 0: EASE weights or cosines
    user_categorical: np.ndarray  # (n_users, n_user_categorical) int64, 0 = unknown
    history_offsets: np.ndarray  # (n_users + 1,) int64, CSR offsets into history_items
    history_items: np.ndarray  # (nnz,) int64, each user's interactions oldest first
    negative_offsets: np.ndarray  # (n_users + 1,) int64, CSR offsets into negative_items
    negative_items: np.ndarray  # (nnz,) int64, each user's items with only negative feedback
    item_content: np.ndarray | None = None  # (n_items, content.dim) float16, L2-normalised; None before schema 5
    # (n_items, item_transitions) int32 and float32 >= 0, of the trained items only (never grown for items added
    # live: they follow nothing yet); None where the bundle has none.
    item_transitions: np.ndarray | None = None
    item_transition_weights: np.ndarray | None = None

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def file(self, name: str) -> Path:
        return self.path / name

    def history(self, user: int) -> np.ndarray:
        """The positive interactions of user index `user` in the bundle's data, oldest first (the user tower's
        and the ranker's history); empty for an unknown user (index -1)."""
        if user < 0:
            return self.history_items[:0]
        return self.history_items[self.history_offsets[user] : self.history_offsets[user + 1]]

    def negatives(self, user: int) -> np.ndarray:
        """The items user index `user` gave only negative feedback in the bundle's data (seen, not history)."""
        if user < 0:
            return self.negative_items[:0]
        return self.negative_items[self.negative_offsets[user] : self.negative_offsets[user + 1]]

    def seen(self, user: int) -> np.ndarray:
        """Every item the user interacted with in the bundle's data, whatever the rating: never recommended."""
        negatives = self.negatives(user)
        return self.history(user) if not len(negatives) else np.concatenate([self.history(user), negatives])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing; is {path} a model bundle?")
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in READABLE_SCHEMAS:
        raise BundleError(
            f"{manifest_path}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this service reads schemas {', '.join(map(str, READABLE_SCHEMAS))})"
        )
    if isinstance(raw, dict) and raw.get("schema_version") == 2 and "onnx_fp16_parity_max_abs_diff" in raw:
        raise BundleError(f"{manifest_path}: onnx_fp16_parity_max_abs_diff needs schema_version 3, not 2")
    for field, since in (("content", 5), ("similar_items", 5), ("candidates", 6)):
        if isinstance(raw, dict) and field in raw and raw.get("schema_version", 0) < since:
            raise BundleError(f"{manifest_path}: {field} needs schema_version {since}, not {raw.get('schema_version')}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise BundleError(f"{manifest_path}: invalid manifest: {problems}") from e


def variant_name(model: str, precision: str = "fp16") -> str:
    """The file of `model` (user_tower, ranker) in `precision` (fp32, fp16, int8)."""
    return f"{model}.onnx" if precision == "fp32" else f"{model}.{precision}.onnx"


def verify_files(path: Path, manifest: Manifest) -> None:
    required = REQUIRED_FILES + ((TEXT_ENCODER, TOKENIZER) if manifest.dims.text_dim else ())
    required += (NEGATIVE_OFFSETS, NEGATIVE_ITEMS) if manifest.schema_version >= 4 else ()
    required += (ITEM_CONTENT,) if manifest.content is not None else ()
    required += tuple(variant_name(model) for model in manifest.onnx_fp16_parity_max_abs_diff)
    missing = [name for name in required if name not in manifest.files]
    if missing:
        raise BundleError(f"{path / MANIFEST}: files lists no entry for {', '.join(missing)}")
    for name, entry in manifest.files.items():
        if Path(name).name != name:
            raise BundleError(f"{path / MANIFEST}: file name {name!r} must be a plain name inside the bundle")
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing")
        size = file.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{file}: size {size} bytes, manifest says {entry.bytes}")
        actual = sha256_file(file)
        if actual != entry.sha256:
            raise BundleError(f"{file}: sha256 {actual} does not match the manifest ({entry.sha256}); corrupted?")


def load_bundle(path: Path, *, verify_checksums: bool = True) -> Bundle:
    """Read and validate a bundle. Raises `BundleError` naming what is wrong."""
    path = Path(path).resolve()
    manifest = read_manifest(path)
    if verify_checksums:
        verify_files(path, manifest)
    dims = manifest.dims
    n_cat = len(dims.user_categorical_cardinalities)
    if n_cat != len(manifest.feature_spec.user_categorical):
        raise BundleError(f"{path / MANIFEST}: dims.user_categorical_cardinalities and feature_spec disagree")
    if dims.item_dense_dim != len(manifest.feature_spec.item_dense):
        raise BundleError(f"{path / MANIFEST}: dims.item_dense_dim and feature_spec.item_dense disagree")
    if dims.ranker_dense_dim != len(manifest.feature_spec.ranker_dense):
        raise BundleError(f"{path / MANIFEST}: dims.ranker_dense_dim and feature_spec.ranker_dense disagree")

    if manifest.candidates.ranking == "gbm" and RANKER_GBM not in manifest.files:
        raise BundleError(f"{path / MANIFEST}: candidates.ranking is 'gbm' but the bundle lists no {RANKER_GBM}")
    item_ids = load_str_list(path / ITEM_IDS, dims.n_items)
    user_ids = load_str_list(path / USER_IDS, dims.n_users)
    offsets, history = load_csr(path, HISTORY_OFFSETS, HISTORY_ITEMS, dims)
    if manifest.schema_version >= 4:
        negative_offsets, negatives = load_csr(path, NEGATIVE_OFFSETS, NEGATIVE_ITEMS, dims)
    else:
        negative_offsets, negatives = np.zeros(dims.n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    neighbours, neighbour_weights = load_item_lists(
        path, ITEM_NEIGHBOURS, ITEM_NEIGHBOUR_WEIGHTS, dims.item_neighbours, dims
    )
    transitions, transition_weights = None, None
    if dims.item_transitions:
        transitions, transition_weights = load_item_lists(
            path, ITEM_TRANSITIONS, ITEM_TRANSITION_WEIGHTS, dims.item_transitions, dims
        )
    content = None
    if manifest.content is not None:
        content = load_array(path / ITEM_CONTENT, np.float16, (dims.n_items, manifest.content.dim))
        if not np.isfinite(content).all():
            raise BundleError(f"{path / ITEM_CONTENT}: content vectors must be finite")
    user_cat = load_array(path / USER_CATEGORICAL, np.int64, (dims.n_users, n_cat))
    for j, card in enumerate(dims.user_categorical_cardinalities):
        if len(user_cat) and (user_cat[:, j].min() < 0 or user_cat[:, j].max() >= card):
            raise BundleError(f"{path / USER_CATEGORICAL}: column {j} outside [0, {card})")
    return Bundle(
        path=path,
        manifest=manifest,
        item_ids=item_ids,
        user_ids=user_ids,
        item_titles=load_str_list(path / ITEM_TITLES, dims.n_items),
        item_index=index_of(item_ids, path / ITEM_IDS),
        user_index=index_of(user_ids, path / USER_IDS),
        item_embeddings=load_array(path / ITEM_EMBEDDINGS, np.float32, (dims.n_items, dims.embedding_dim)),
        item_dense=load_array(path / ITEM_DENSE, np.float32, (dims.n_items, dims.item_dense_dim)),
        item_log_popularity=load_array(path / ITEM_LOG_POPULARITY, np.float32, (dims.n_items,)),
        item_recent_popularity=load_array(path / ITEM_RECENT_POPULARITY, np.float32, (dims.n_items,)),
        item_neighbours=neighbours,
        item_neighbour_weights=neighbour_weights,
        user_categorical=user_cat,
        history_offsets=offsets,
        history_items=history,
        negative_offsets=negative_offsets,
        negative_items=negatives,
        item_content=content,
        item_transitions=transitions,
        item_transition_weights=transition_weights,
    )
