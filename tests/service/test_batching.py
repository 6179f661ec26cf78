"""Micro-batching: batched answers are the unbatched ones; the batcher coalesces, orders and fails per batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.batching import MicroBatcher
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.recommend.pipeline import Pipeline, Query


def test_recommend_batch_equals_one_at_a_time(tiny_bundle: Path) -> None:
    pipeline = Pipeline.open(load_bundle(tiny_bundle), device="cpu")
    n_users = pipeline.bundle.manifest.dims.n_users
    users = [0, 5, -1, 17, n_users - 1, 5]
    embeddings = pipeline.encode(np.array(users))
    item = pipeline.bundle.manifest.dims.n_items // 2
    queries = [
        Query(users[0], embeddings[0], 10, 100),
        Query(users[1], None, 5, 100),  # encoded in the batch
        Query(users[2], embeddings[2], 10, 100),  # unknown user
        Query(users[3], embeddings[3], 20, 50, exclude=np.array([item, item + 1])),
        Query(users[4], None, 10, 100, history=np.array([1, 2, 3])),  # fresh events as history
        Query(users[5], embeddings[5], 1, 100),
    ]
    batched = pipeline.recommend_batch(queries)
    assert [r.batch_size for r in batched] == [len(queries)] * len(queries)
    for q, got in zip(queries, batched, strict=True):
        alone = pipeline.recommend(q.user, q.embedding, q.k, q.num_candidates, q.exclude, q.history)
        assert len(got.items) == q.k
        np.testing.assert_array_equal(got.items, alone.items)
        np.testing.assert_allclose(got.ranking_scores, alone.ranking_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.retrieval_scores, alone.retrieval_scores, rtol=1e-5, atol=1e-6)
        assert got.n_after_filter == alone.n_after_filter
        assert got.encoded == (q.embedding is None)
    np.testing.assert_allclose(batched[1].embedding, embeddings[1], atol=1e-6)
    assert not set(batched[3].items.tolist()) & {item, item + 1}


def test_a_batch_ranked_in_chunks_equals_one_at_a_time(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = Pipeline.open(load_bundle(tiny_bundle), device="cpu")
    monkeypatch.setattr(pipeline.ranker, "CHUNK_ROWS", 150)  # 100 candidates each: chunks of one and two requests
    users = list(range(7))
    embeddings = pipeline.encode(np.array(users))
    queries = [Query(u, embeddings[u], 10, 100 if u % 3 else 60) for u in users]
    batched = pipeline.recommend_batch(queries)
    for q, got in zip(queries, batched, strict=True):
        alone = pipeline.recommend(q.user, q.embedding, q.k, q.num_candidates)
        np.testing.assert_array_equal(got.items, alone.items)
        np.testing.assert_allclose(got.ranking_scores, alone.ranking_scores, rtol=1e-5, atol=1e-6)


def run(coro_fn):  # type: ignore[no-untyped-def]
    return asyncio.run(coro_fn())


def test_batcher_coalesces_what_queues_while_a_batch_runs() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def fn(requests: Sequence[int]) -> list[int]:
        batches.append(list(requests))
        if len(batches) == 1:
            release.wait(5)  # the first batch holds the worker while the others queue
        return [r * 10 for r in requests]

    async def main() -> list[int]:
        with ThreadPoolExecutor(2) as executor:
            batcher: MicroBatcher[int, int] = MicroBatcher(fn, executor, max_batch=4, workers=1)
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 10)]
            await asyncio.sleep(0.05)
            assert batcher.queued == 9
            release.set()
            return list(await asyncio.gather(first, *rest))

    assert run(main) == [i * 10 for i in range(10)]
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_batcher_off_runs_each_request_alone_with_several_workers() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def fn(requests: Sequence[int]) -> list[int]:
        assert len(requests) == 1
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.02)
        with lock:
            active[0] -= 1
        return list(requests)

    async def main() -> list[int]:
        with ThreadPoolExecutor(4) as executor:
            batcher: MicroBatcher[int, int] = MicroBatcher(fn, executor, max_batch=1, workers=3)
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(12))))

    assert run(main) == list(range(12))
    assert peak[0] == 3


def test_batcher_failure_reaches_every_request_of_the_batch_only() -> None:
    def fn(requests: Sequence[int]) -> list[int]:
        if -1 in requests:
            raise ValueError("bad batch")
        return list(requests)

    async def main() -> list[object]:
        with ThreadPoolExecutor(1) as executor:
            batcher: MicroBatcher[int, int] = MicroBatcher(fn, executor, max_batch=2, workers=1)
            return list(await asyncio.gather(*(batcher.submit(i) for i in (-1, 1, 2, 3)), return_exceptions=True))

    results = run(main)
    # All four queue before the worker starts: batches [-1, 1] and [2, 3]; only the first fails.
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == [2, 3]


def test_batcher_rejects_bad_options() -> None:
    with ThreadPoolExecutor(1) as executor, pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda r: list(r), executor, max_batch=0)


def test_api_answers_are_the_same_with_batching_on_and_off(settings: Settings) -> None:
    users = [str(u) for u in range(1, 41)] + ["no-such-user"]

    def answers(batch_max_size: int) -> tuple[dict[str, list[str]], float]:
        app = create_app(settings.model_copy(update={"batch_max_size": batch_max_size, "batch_workers": 1}))
        with TestClient(app) as client, ThreadPoolExecutor(16) as pool:

            def ask(user: str) -> list[str]:
                r = client.post("/v1/recommendations", json={"user_id": user, "k": 10})
                assert r.status_code == 200, r.text
                return [i["item_id"] for i in r.json()["items"]]

            out = dict(zip(users, pool.map(ask, users), strict=True))
            text = client.get("/metrics").text
        count = next(line for line in text.splitlines() if line.startswith("reco_batch_size_count"))
        total = next(line for line in text.splitlines() if line.startswith("reco_batch_size_sum"))
        return out, float(total.split()[1]) / float(count.split()[1])

    on, mean_on = answers(16)
    off, mean_off = answers(1)
    assert on == off
    assert mean_off == 1.0
    assert mean_on >= 1.0
