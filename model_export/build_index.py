"""Build the FAISS inner-product index over the item embeddings and measure its recall against exact search.

The index type follows the catalogue size (`IndexConfig.kind = "auto"`): exact `IndexFlatIP` up to
`exact_max_items`, an inverted file (`IndexIVFFlat`) above. With k = 500 candidates, a flat search's cost is as
much the top-k selection over every item as the distance computation, so scanning a few inverted lists (and
selecting from those) is what keeps retrieval fast at 100K+ items; IVF also has a GPU implementation, which
HNSW lacks. `nprobe` is the smallest power of two whose recall against exact search, at the depth the service
retrieves (`recall_at`) and on real user queries, reaches `recall_target`; the bundle records both.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from model_export.config import IndexConfig


def build_index(
    embeddings: np.ndarray, config: IndexConfig, queries: np.ndarray | None = None
) -> tuple[Any, dict[str, Any]]:
    """Returns (index, info). `queries` (user embeddings) tune IVF's nprobe; without them nprobe is nlist / 16."""
    n, d = embeddings.shape
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    kind = config.kind
    if kind == "auto":
        kind = "flat" if n <= config.exact_max_items else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(embeddings)
        return index, {"type": "IndexFlatIP", "metric": "inner_product", "params": {}}
    if kind == "hnsw":
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
    if kind != "ivf":
        raise ValueError(f"unknown index kind {config.kind!r}; choose auto, flat, ivf or hnsw")
    nlist = config.ivf_nlist or ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    train = embeddings if n <= 64 * nlist else embeddings[np.sort(rng.choice(n, 64 * nlist, replace=False))]
    ivf.train(train)
    ivf.add(embeddings)
    if queries is None:
        ivf.nprobe = max(1, nlist // 16)
    else:
        ivf.nprobe = tune_nprobe(ivf, embeddings, queries, config.recall_at, config.recall_target)
    params = {"nlist": nlist, "nprobe": int(ivf.nprobe)}
    return ivf, {"type": "IndexIVFFlat", "metric": "inner_product", "params": params}


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, as a power of two (100K items: 1024; 1M: 4096)."""
    return int(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def tune_nprobe(index: Any, embeddings: np.ndarray, queries: np.ndarray, at: int, target: float) -> int:
    """The smallest power-of-two nprobe whose recall@`at` against exact search reaches `target`."""
    truth = exact_top(embeddings, queries, at)
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        if recall_vs_exact(index, embeddings, queries, at, truth) >= target:
            return nprobe
        nprobe *= 2
    return int(index.nlist)


def exact_top(embeddings: np.ndarray, queries: np.ndarray, at: int) -> np.ndarray:
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), min(at, len(embeddings)))
    return truth


def recall_vs_exact(
    index: Any, embeddings: np.ndarray, queries: np.ndarray, at: int, truth: np.ndarray | None = None
) -> float:
    """Mean share of the exact top-`at` (by inner product) that `index` also returns in its top `at`."""
    at = min(at, len(embeddings))
    if truth is None:
        truth = exact_top(embeddings, queries, at)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), at)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / at)
