"""Items added after training: their text through the bundle's ONNX text encoder (tokenizer.json with the
`tokenizers` package: no torch), then the ONNX item tower through its unknown-item row, so the embedding
comes from content alone, in the same space as the trained items'. An item whose content is a trained item's
(service.items.content: the same content vector) takes that item's place instead (schema 5 bundles, which hold the
trained items' content vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from service.core.bundle import ITEM_TOWER, TEXT_ENCODER, TOKENIZER, Bundle, BundleError
from service.core.device import open_session
from service.items.content import ContentWeights, content_vectors, nearest_by_content, same_content
from service.recommend.user_encoder import check_inputs

IDENTICAL_CANDIDATES = 8  # trained items looked at for an identical content vector
MAX_TOKENS = 128  # item texts are short; longer ones are truncated (the model was trained with up to 256)


def load_tokenizer(path: Path) -> Any:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers package raises its own exception types
        raise BundleError(f"{path}: not a tokenizer file ({e})") from e
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),  # (B, T)
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),  # (B, T)
    }


class ItemEncoder:
    """numpy in ((B, D) dense features, B texts), numpy out ((B, E) float32 L2-normalised embeddings)."""

    def __init__(self, bundle: Bundle, providers: list[str], intra_op_threads: int) -> None:
        dims = bundle.manifest.dims
        self.text_dim = dims.text_dim
        self._unknown = dims.n_items
        self._item_session = open_session(bundle.file(ITEM_TOWER), providers, intra_op_threads)
        expected = {"item_idx": 1, "item_dense": dims.item_dense_dim}
        self._text_session: ort.InferenceSession | None = None
        self._tokenizer: Any = None
        if self.text_dim:
            expected["item_text"] = self.text_dim
            self._text_session = open_session(bundle.file(TEXT_ENCODER), providers, intra_op_threads)
            self._tokenizer = load_tokenizer(bundle.file(TOKENIZER))
        check_inputs(self._item_session, expected, bundle, ITEM_TOWER)
        self._content = bundle.item_content
        self._spec = bundle.manifest.content
        self._dense_names = bundle.manifest.feature_spec.item_dense
        self._trained_embeddings = bundle.item_embeddings[: dims.n_items]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(B, text_dim) float32 sentence embeddings."""
        if self._text_session is None:
            return np.zeros((len(texts), 0), dtype=np.float32)
        out = self._text_session.run(None, tokenize(self._tokenizer, texts))[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode(self, dense: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """(B, E) embeddings of items from their dense features (B, D) and texts."""
        return self.encode_with_twins(dense, texts)[0]

    def encode_with_twins(self, dense: np.ndarray, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(B, E) embeddings, and for each item the trained items whose content it has (int64, often empty):
        such an item takes their place."""
        embeddings = self.tower(dense, texts)
        if self._content is None:
            return embeddings, [np.zeros(0, dtype=np.int64) for _ in range(len(dense))]
        twins = same_content(*nearest_by_content(self.content(dense, texts), self._content, IDENTICAL_CANDIDATES))
        for row, found in enumerate(twins):
            if len(found):  # their place: the mean of their trained embeddings
                place = self._trained_embeddings[found].mean(axis=0)
                embeddings[row] = place / np.linalg.norm(place)
        return embeddings, twins

    def content(self, dense: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """(B, C) content vectors, as the exporter computed the trained items'."""
        assert self._spec is not None, "this bundle has no content vectors"
        spec = self._spec
        weights = ContentWeights(spec.text_weight, spec.categories_weight, spec.year_weight, spec.year_bucket)
        return content_vectors(self.embed_texts(texts), dense, self._dense_names, weights)

    def tower(self, dense: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """(B, E) through the item tower's unknown-item row (content only)."""
        inputs = {
            "item_idx": np.full(len(dense), self._unknown, dtype=np.int64),
            "item_dense": np.ascontiguousarray(dense, dtype=np.float32),
        }
        if self.text_dim:
            inputs["item_text"] = self.embed_texts(texts)
        out = self._item_session.run(None, inputs)[0]
        return np.ascontiguousarray(out, dtype=np.float32)  # (B, E)
