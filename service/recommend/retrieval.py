"""Stage 2: candidate retrieval from the FAISS inner-product index, on the GPU when there is one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from service.core.bundle import Bundle, BundleError
from service.recommend.catalogue import RowBuffer

log = logging.getLogger(__name__)


GPU_MAX_K = 2048  # FAISS on the GPU returns at most this many neighbours per query
FOLD_MIN = 4096  # vectors added live searched exactly beside the index before they are folded into it


@dataclass(frozen=True, slots=True)
class Searchable:
    """What one search reads, swapped whole: the CPU index and the vectors added live since it was built or
    last folded into it (item indices `ntotal`, `ntotal` + 1, ...)."""

    cpu_index: Any
    live: np.ndarray  # (m, E) float32, a view of a growable buffer

    @property
    def base(self) -> int:
        return int(self.cpu_index.ntotal)


EMPTY_SCORE = -float(np.finfo(np.float32).max)  # what FAISS gives a slot it has no neighbour for


def merge_live(
    scores: np.ndarray, items: np.ndarray, queries: np.ndarray, live: np.ndarray, base: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The index's answer (B, <= n) and the exact top of the live vectors (indices from `base`) merged: the
    best n, best first."""
    live_scores, live_items = faiss.knn(queries, live, min(n, len(live)), metric=faiss.METRIC_INNER_PRODUCT)
    all_scores = np.concatenate([scores, live_scores], axis=1)
    all_items = np.concatenate([items, np.where(live_items >= 0, live_items + base, -1)], axis=1)
    all_scores = np.where(all_items >= 0, all_scores, EMPTY_SCORE)  # an empty slot last
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(all_scores, order, 1).astype(np.float32), np.take_along_axis(all_items, order, 1)


class Retriever:
    """numpy in ((B, E) float32 queries), numpy out ((B, n) scores, (B, n) item indices, -1 = none).

    A GPU index is not thread-safe: every search on it holds a lock, so it is used by one thread at a time.
    CPU FAISS indexes are safe for concurrent searches and take no lock. On the GPU the CPU index is kept too:
    a search deeper than the GPU can go (GPU_MAX_K) runs there instead of coming back short.
    """

    def __init__(self, bundle: Bundle, n_gpus: int) -> None:
        path = bundle.file("items.faiss")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise BundleError(f"{path}: FAISS cannot read it ({e})") from e
        dims = bundle.manifest.dims
        if index.d != dims.embedding_dim or index.ntotal != dims.n_items:
            raise BundleError(
                f"{path}: index holds {index.ntotal} vectors of dimension {index.d}, manifest says "
                f"{dims.n_items} x {dims.embedding_dim}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(f"{path}: index metric is not inner product")
        self._params = bundle.manifest.index.params
        set_search_parameters(faiss.ParameterSpace(), index, self._params)
        self.device = "cpu"
        self._gpu_resources: Any = None
        self._lock: threading.Lock | None = None
        self._index = self._to_gpu(index, bundle) if n_gpus > 0 else index
        self.cpu_fallbacks = 0  # searches a GPU index could not take (deeper than GPU_MAX_K)
        self._live_rows = RowBuffer(np.empty((0, index.d), dtype=np.float32))
        # Searched without a lock; on the GPU, for searches deeper than GPU_MAX_K.
        self._searchable = Searchable(index, np.empty((0, index.d), dtype=np.float32))
        self.folds = 0  # times the vectors added live were folded into the index

    def _to_gpu(self, index: Any, bundle: Bundle) -> Any:
        self._gpu_resources = faiss.StandardGpuResources()
        try:
            gpu_index: Any = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        except RuntimeError:
            # HNSW has no GPU implementation; exact search over the same embeddings is fast on a GPU.
            log.info(
                "index type %s has no GPU version; serving exact inner product on the GPU",
                type(index).__name__,
            )
            gpu_index = faiss.GpuIndexFlatIP(self._gpu_resources, bundle.manifest.dims.embedding_dim)
            gpu_index.add(bundle.item_embeddings)
        else:
            # An IVF index keeps its type on the GPU; its search parameter is set there again.
            set_search_parameters(faiss.GpuParameterSpace(), gpu_index, self._params)
        self.device = "cuda"
        self._lock = threading.Lock()
        return gpu_index

    def add(self, embeddings: np.ndarray) -> None:
        """Append vectors (their ids continue the item indices), for items added live. They go into a growable
        buffer beside the index, searched exactly (faiss.knn) and merged with the index's answer: the index is
        never copied per call. Once the buffer holds FOLD_MIN vectors and 1/16 of the index, they are folded
        into a copy of the index, swapped in: one copy per that many items, amortised. A GPU index is extended
        under its lock."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        current = self._searchable
        live = self._live_rows.append(embeddings, len(current.live))
        if len(live) < max(FOLD_MIN, current.base // 16):
            self._searchable = Searchable(current.cpu_index, live)
            return
        cpu = faiss.clone_index(current.cpu_index)
        cpu.add(live)
        self._live_rows = RowBuffer(live[:0])
        folded = Searchable(cpu, live[:0])
        if self._lock is None:
            self._index, self._searchable = cpu, folded
        else:
            with self._lock:
                self._index.add(live)
                self._searchable = folded
        self.folds += 1

    @property
    def n_items(self) -> int:
        """Vectors searchable now: the index's and those added live beside it."""
        current = self._searchable
        return current.base + len(current.live)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._lock is not None and min(n, self.n_items) <= GPU_MAX_K:
            with self._lock:
                current = self._searchable  # with the GPU index it belongs to: a fold changes both under the lock
                scores, items = self._index.search(queries, min(n, current.base))
        else:
            if self._lock is not None:
                self.cpu_fallbacks += 1
            current = self._searchable  # one consistent index and live set, even if `add` swaps in another
            scores, items = current.cpu_index.search(queries, min(n, current.base))
        if len(current.live):
            scores, items = merge_live(scores, items, queries, current.live, current.base, n)
        return scores, items.astype(np.int64, copy=False)  # (B, n), (B, n)

    def search_each(self, queries: np.ndarray, depths: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query searched to its own depth, near enough: queries whose depths are within 2x of each other
        share one FAISS call at the group's deepest (a typical batch is one group), so one request with a long
        exclusion list deepens only its own search. Per query: (scores, item indices), best first."""
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.float32), np.empty(0, np.int64))] * len(depths)
        for group in depth_groups(depths):
            scores, items = self.search(queries[group], max(depths[j] for j in group))
            for row, j in enumerate(group):
                out[j] = (scores[row], items[row])
        return out


def depth_groups(depths: Sequence[int]) -> list[list[int]]:
    """Indices of `depths` in groups, shallowest first, none deeper than twice its group's shallowest."""
    groups: list[list[int]] = []
    for j in sorted(range(len(depths)), key=depths.__getitem__):
        if groups and depths[j] <= 2 * depths[groups[-1][0]]:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def set_search_parameters(space: Any, index: Any, params: dict[str, Any]) -> None:
    """The bundle's recorded search-time parameters (HNSW efSearch, IVF nprobe) onto the opened index."""
    if "ef_search" in params:
        space.set_index_parameter(index, "efSearch", int(params["ef_search"]))
    if "nprobe" in params:
        space.set_index_parameter(index, "nprobe", int(params["nprobe"]))
