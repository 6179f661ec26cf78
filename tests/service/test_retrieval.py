"""Retrieval depth: each request searched to its own depth, and searches deeper than the GPU can go served by the
CPU index instead of coming back short (tested without a GPU: FAISS's GPU calls are replaced by a stand-in that
refuses what the real one cannot do)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faiss
import numpy as np
import pytest

from service.core.bundle import load_bundle
from service.recommend import retrieval
from service.recommend.pipeline import Pipeline, Query
from service.recommend.retrieval import GPU_MAX_K, Retriever, depth_groups


def test_depth_groups_keep_each_search_within_twice_its_depth() -> None:
    depths = [520, 530, 2100, 600, 50_000, 1100]
    groups = depth_groups(depths)
    assert sorted(j for g in groups for j in g) == list(range(len(depths)))
    for group in groups:
        assert max(depths[j] for j in group) <= 2 * min(depths[j] for j in group)
    assert len(groups) == 3  # {520, 530, 600, 1100}, {2100}, {50000}


def test_one_long_exclusion_list_deepens_only_its_own_search(tiny_bundle: Path) -> None:
    pipeline = Pipeline.open(load_bundle(tiny_bundle), device="cpu")
    searched: list[tuple[int, int]] = []  # (queries, depth) per FAISS call
    search = pipeline.retriever.search

    def recording(queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        searched.append((len(queries), n))
        return search(queries, n)

    pipeline.retriever.search = recording  # type: ignore[method-assign]
    n_items = pipeline.retriever.n_items
    heavy = np.arange(0, n_items, 2, dtype=np.int64)  # half the catalogue excluded
    queries = [Query(u, None, 5, 20) for u in range(4)] + [Query(4, None, 5, 20, exclude=heavy)]
    together = pipeline.recommend_batch(queries)
    assert len(searched) == 2
    light = next(n for b, n in searched if b == 4)
    deep = next(n for b, n in searched if b == 1)
    assert light < 2 * 20 + max(len(pipeline.bundle.history(u)) for u in range(4)) * 2
    assert deep >= len(heavy)
    searched.clear()
    for q, answer in zip(queries, together, strict=True):  # each as it is alone
        np.testing.assert_array_equal(pipeline.recommend_batch([q])[0].items, answer.items)
    assert not set(together[4].items.tolist()) & set(heavy.tolist())


class StandInGpuIndex:
    """What faiss.index_cpu_to_gpu returns, as far as the Retriever uses it: refuses k > GPU_MAX_K as FAISS's
    GPU indexes do (they assert), so a search the Retriever should not send it fails the test."""

    def __init__(self, cpu: Any) -> None:
        self.cpu = faiss.clone_index(cpu)
        self.ntotal = cpu.ntotal
        self.searches = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > GPU_MAX_K:
            raise RuntimeError(f"GPU index: k = {k} > {GPU_MAX_K}")
        self.searches += 1
        return self.cpu.search(queries, k)  # type: ignore[no-any-return]

    def add(self, x: np.ndarray) -> None:
        self.cpu.add(x)
        self.ntotal = self.cpu.ntotal


def test_a_search_deeper_than_the_gpu_allows_runs_on_the_cpu_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, dim = 5000, 16
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    bundle = SimpleNamespace(
        file=lambda name: tmp_path / name,
        manifest=SimpleNamespace(dims=SimpleNamespace(embedding_dim=dim, n_items=n), index=SimpleNamespace(params={})),
        item_embeddings=vectors,
    )
    stand_ins: list[StandInGpuIndex] = []

    def to_gpu(resources: object, device: int, cpu: Any) -> StandInGpuIndex:
        stand_ins.append(StandInGpuIndex(cpu))
        return stand_ins[-1]

    monkeypatch.setattr(retrieval.faiss, "StandardGpuResources", lambda: object(), raising=False)  # CPU faiss
    monkeypatch.setattr(retrieval.faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(retrieval.faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)
    retriever = Retriever(bundle, n_gpus=1)  # type: ignore[arg-type]
    assert retriever.device == "cuda"
    queries = vectors[:3]
    _, shallow = retriever.search(queries, 500)
    assert stand_ins[0].searches == 1  # on the "GPU"
    _, deep = retriever.search(queries, 3000)
    assert deep.shape == (3, 3000)  # every candidate asked for, none cut at 2048
    assert (deep >= 0).all()
    assert retriever.cpu_fallbacks == 1
    np.testing.assert_array_equal(deep[:, :500], shallow)
    retriever.add(vectors[:10] * 2)  # live items: searched beside the index, on either path
    assert retriever.n_items == n + 10
    assert stand_ins[0].ntotal == n  # the GPU index is not extended per item
    for depth in (500, 3000):
        _, found = retriever.search(queries, depth)
        np.testing.assert_array_equal(found[:, 0], n + np.arange(3))  # each query's double, first
    assert stand_ins[0].searches == 2


def flat_retriever(tmp_path: Path, vectors: np.ndarray) -> Retriever:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    dims = SimpleNamespace(embedding_dim=vectors.shape[1], n_items=len(vectors))
    bundle = SimpleNamespace(
        file=lambda name: tmp_path / name,
        manifest=SimpleNamespace(dims=dims, index=SimpleNamespace(params={})),
        item_embeddings=vectors,
    )
    return Retriever(bundle, n_gpus=0)  # type: ignore[arg-type]


def test_vectors_added_live_are_found_as_if_indexed_and_folded_in_at_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live vectors sit beside the index, searched exactly and merged: the same answers as one flat index of
    everything; past the fold size they join the index (one copy per fold, not per add)."""
    monkeypatch.setattr(retrieval, "FOLD_MIN", 100)
    rng = np.random.default_rng(1)
    base, added = rng.standard_normal((800, 8)).astype(np.float32), rng.standard_normal((260, 8)).astype(np.float32)
    retriever = flat_retriever(tmp_path, base)
    reference = faiss.IndexFlatIP(8)
    reference.add(base)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    for start in range(0, len(added), 13):
        chunk = added[start : start + 13]
        retriever.add(chunk)
        reference.add(chunk)
        for depth in (1, 20, 2000):  # deeper than the catalogue too
            scores, items = retriever.search(queries, depth)
            want_scores, want_items = reference.search(queries, min(depth, reference.ntotal))
            np.testing.assert_array_equal(items, want_items)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    assert retriever.n_items == 1060
    assert retriever.folds == 2  # at 104 and 208 live vectors (FOLD_MIN 100 > 800 / 16): not per add
    assert retriever._searchable.base == 1008
    assert len(retriever._searchable.live) == 52


def test_searches_during_adds_and_a_fold_see_a_consistent_catalogue(tmp_path: Path) -> None:
    """Searches take no lock on the CPU: while another thread adds vectors (through a fold), every answer is
    whole, with no empty slot, no repeat, and only items that exist."""
    rng = np.random.default_rng(2)
    retriever = flat_retriever(tmp_path, rng.standard_normal((500, 8)).astype(np.float32))
    added = rng.standard_normal((6000, 8)).astype(np.float32)
    done = threading.Event()
    problems: list[str] = []

    def search() -> None:
        queries = rng.standard_normal((4, 8)).astype(np.float32)
        while not done.is_set():
            _, items = retriever.search(queries, 50)
            if (items < 0).any() or any(len(set(row)) != 50 for row in items.tolist()):
                problems.append(f"an empty or repeated slot: {items}")
            if items.max() >= retriever.n_items:
                problems.append(f"item {items.max()} of {retriever.n_items}")

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(0, len(added), 7):
        retriever.add(added[start : start + 7])
    done.set()
    for t in threads:
        t.join()
    assert retriever.folds == 1
    assert retriever.n_items == 6500
    assert not problems, problems[:3]
