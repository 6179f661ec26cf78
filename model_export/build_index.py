"""Build the FAISS inner-product index over the item embeddings and measure its recall against exact search."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from model_export.config import IndexConfig


def build_index(embeddings: np.ndarray, config: IndexConfig) -> tuple[Any, dict[str, Any]]:
    """Exact `IndexFlatIP` up to `exact_max_items` items, HNSW (inner product) above. Returns (index, info)."""
    n, d = embeddings.shape
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if n <= config.exact_max_items:
        index = faiss.IndexFlatIP(d)
        index.add(embeddings)
        return index, {"type": "IndexFlatIP", "metric": "inner_product", "params": {}}
    hnsw = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = config.hnsw_ef_construction
    hnsw.add(embeddings)
    hnsw.hnsw.efSearch = config.hnsw_ef_search
    params = {
        "m": config.hnsw_m,
        "ef_construction": config.hnsw_ef_construction,
        "ef_search": config.hnsw_ef_search,
    }
    return hnsw, {"type": "IndexHNSWFlat", "metric": "inner_product", "params": params}


def recall_vs_exact(index: Any, embeddings: np.ndarray, queries: np.ndarray, at: int) -> float:
    """Mean share of the exact top-`at` (by inner product) that `index` also returns in its top `at`."""
    at = min(at, len(embeddings))
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth = exact.search(queries, at)
    _, found = index.search(queries, at)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / at)
