"""Overload: bounded in-flight requests turned away at once with 503 + Retry-After; a request deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.batching import MicroBatcher
from service.core.settings import Settings


def slow_down(client: TestClient, gate: threading.Event) -> None:
    """Every recommendation batch waits for `gate` (or 5 s) before computing."""
    pipeline = client.app.state.reco.pipeline  # type: ignore[attr-defined]
    original = pipeline.recommend_batch

    def recommend_batch(queries):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return original(queries)

    pipeline.recommend_batch = recommend_batch


def ask(client: TestClient, user: str = "1") -> tuple[int, dict[str, str], float]:
    t0 = time.perf_counter()
    r = client.post("/v1/recommendations", json={"user_id": user, "k": 5})
    return r.status_code, dict(r.headers), time.perf_counter() - t0


def test_requests_beyond_max_in_flight_are_turned_away_at_once(settings: Settings) -> None:
    gate = threading.Event()
    with TestClient(create_app(settings.model_copy(update={"max_in_flight": 2}))) as client:
        slow_down(client, gate)
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(ask, client, str(u)) for u in (1, 2)]
            time.sleep(0.3)  # both admitted and waiting on the gate
            status, headers, seconds = ask(client, "3")
            assert status == 503
            assert headers["retry-after"] == "1"
            assert seconds < 1.0  # at once, not after the held ones
            gate.set()
            assert [f.result()[0] for f in held] == [200, 200]
        assert ask(client, "3")[0] == 200  # capacity is back
        text = client.get("/metrics").text
        assert 'reco_rejected_total{reason="overload"} 1.0' in text
        assert "reco_in_flight 0.0" in text


def test_a_request_past_its_deadline_is_a_503(settings: Settings) -> None:
    gate = threading.Event()
    with TestClient(create_app(settings.model_copy(update={"request_timeout_s": 0.3}))) as client:
        slow_down(client, gate)
        status, headers, seconds = ask(client)
        gate.set()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert 0.3 <= seconds < 2.0
        assert 'reco_rejected_total{reason="deadline"} 1.0' in client.get("/metrics").text


def test_the_batcher_does_not_compute_a_request_abandoned_while_queued() -> None:
    computed: list[int] = []
    gate = threading.Event()

    def fn(requests: Sequence[int]) -> list[int]:
        if requests[0] == 0:
            gate.wait(5)
        computed.extend(requests)
        return list(requests)

    async def main() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher: MicroBatcher[int, int] = MicroBatcher(fn, executor, max_batch=8, workers=1)
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await batcher.submit(1)  # queued behind the held batch, then abandoned
            kept = asyncio.ensure_future(batcher.submit(2))
            gate.set()
            assert await first == 0
            assert await kept == 2

    asyncio.run(main())
    assert computed == [0, 2]


def test_a_body_over_the_limit_is_a_413(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": 2048}))) as client:
        big = {"user_id": "1", "k": 5, "exclude_item_ids": [str(i) for i in range(1000)]}
        r = client.post("/v1/recommendations", json=big)
        assert r.status_code == 413  # FastAPI's limit, before the body is read; its body is plain text
        assert client.post("/v1/recommendations", json={"user_id": "1", "k": 5}).status_code == 200
        unknown = client.get("/no/such/route")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
