"""Redis faults under load: a dedicated redis-server paused, resumed, killed and restarted while requests flow.
Every request succeeds, cache hits come back, metrics count it; with the default timeouts, a hung Redis costs
the requests (nearly) nothing: its breaker skips it, for the cache and the event store alike."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.core.settings import Settings
from tests.conftest import ML100K, REDIS_SERVER, free_port, start_redis


def counter(client: TestClient, result: str) -> float:
    metrics = client.app.state.metrics  # type: ignore[attr-defined]
    return float(metrics.cache_requests.labels(result)._value.get())


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_requests_survive_redis_pause_kill_and_restart(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    redis_process = start_redis(port, tmp_path)
    update = {
        "redis_url": f"redis://127.0.0.1:{port}/0",
        "redis_socket_timeout_s": 0.05,
        "redis_connect_timeout_s": 0.05,
        "events_redis_timeout_s": 0.05,
        "breaker_failures": 3,
        "breaker_reset_s": 0.5,
    }
    phases: list[tuple[str, float]] = []
    results: list[tuple[float, int, float]] = []  # (sent at, status, seconds)
    stop = threading.Event()
    try:
        with TestClient(create_app(settings.model_copy(update=update))) as client:

            def traffic(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    t0 = time.monotonic()
                    r = client.post("/v1/recommendations", json={"user_id": str(1 + (worker * 7 + n) % 30), "k": 5})
                    results.append((t0, r.status_code, time.monotonic() - t0))

            def phase(name: str, seconds: float, until: str | None = None) -> dict[str, float]:
                """Counter deltas over at least `seconds`; with `until`, longer (up to 20 s) until that counter
                moved: on a loaded CI machine the hits that follow a recovery may take longer than `seconds`."""
                before = {k: counter(client, k) for k in ("hit", "error", "bypass")}
                phases.append((name, time.monotonic()))
                time.sleep(seconds)
                deadline = time.monotonic() + 20
                while until is not None and counter(client, until) == before[until] and time.monotonic() < deadline:
                    time.sleep(0.1)
                return {k: counter(client, k) - v for k, v in before.items()}

            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(traffic, w) for w in range(4)]
                normal = phase("normal", 1.5, until="hit")
                redis_process.send_signal(signal.SIGSTOP)  # hung: connections open, no answers
                paused = phase("paused", 1.5)
                redis_process.send_signal(signal.SIGCONT)
                resumed = phase("resumed", 1.5, until="hit")
                redis_process.kill()  # gone: connections refused
                redis_process.wait()
                killed = phase("killed", 1.5)
                redis_process = start_redis(port, tmp_path)  # back, empty
                restarted = phase("restarted", 2.0, until="hit")
                stop.set()
                for f in futures:
                    f.result()
            phases.append(("end", time.monotonic()))
    finally:
        stop.set()
        if redis_process.poll() is None:
            redis_process.send_signal(signal.SIGCONT)
            redis_process.kill()
            redis_process.wait()

    seen = {"normal": normal, "paused": paused, "resumed": resumed, "killed": killed, "restarted": restarted}
    assert {status for _, status, _ in results} == {200}  # zero failed requests
    assert len(results) > 100
    for (name, start), (_, end) in itertools.pairwise(phases):
        assert any(start <= at < end for at, _, _ in results), name  # requests flowed in every phase
    assert normal["hit"] > 0, seen
    assert paused["error"] + paused["bypass"] > 0, seen  # the fault is seen and counted
    assert killed["error"] + killed["bypass"] > 0, seen
    assert resumed["hit"] > 0, seen  # hits resume after recovery
    assert restarted["hit"] > 0, seen  # an empty Redis refills and serves hits again


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_redis_password_from_its_own_setting(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    process = start_redis(port, tmp_path, "--requirepass", "s3cret-redis-password")
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for password, expect_hits in (("s3cret-redis-password", True), ("wrong-password", False)):
            update = {"redis_url": url, "redis_password": SecretStr(password)}
            with TestClient(create_app(settings.model_copy(update=update))) as client:
                for _ in range(3):
                    r = client.post("/v1/recommendations", json={"user_id": "1", "k": 5})
                    assert r.status_code == 200  # a refused AUTH is a cache failure, never a failed request
                assert (counter(client, "hit") > 0) is expect_hits
                assert (client.get("/readyz").json()["cache_status"] == "ok") is expect_hits
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def ml100k_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle the size of MovieLens 100K (943 users with ~100 interactions each, 1,682 items), trained by the
    tiny recipe (quickly): requests cost several times the tiny bundle's."""
    if not (ML100K / "u.data").is_file():
        pytest.skip("../shared/data/ml-100k not present")
    from model_export.build import build_bundle
    from model_export.config import preset
    from model_export.data import load_movielens

    out = tmp_path_factory.mktemp("ml100k-bundle")
    return build_bundle(load_movielens(ML100K), preset("tiny"), out, progress=False).path


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize(("size", "concurrency"), [("tiny", 8), ("tiny", 64), ("ml100k", 64)])
def test_a_hung_redis_at_default_timeouts_costs_the_requests_nothing(
    size: str, concurrency: int, tiny_bundle: Path, request: pytest.FixtureRequest
) -> None:
    """`python -m service` with Redis and every timeout and breaker setting at its default, under steady
    connections; Redis SIGSTOPped for 10 s (more than the breaker's 5 s reset, so a trial falls inside): no
    request fails, and only the requests caught in flight when it hung and the breaker's trials wait for Redis:
    Redis reads that failed (each a request that paid a timeout) at most one per connection plus one per breaker
    period, for the embedding cache and the event store alike. Cache writes are made off the response path.
    benchmarks/redis_hang.py prints the same phases (and the latency targets, docs/operating.md)."""
    from benchmarks.redis_hang import hang, known_users

    bundle = tiny_bundle if size == "tiny" else request.getfixturevalue("ml100k_bundle")
    paused_s, reset_s = 10, 5.0  # the breaker's default reset
    phases = {
        row["phase"]: row
        for row in hang(
            bundle,
            known_users(bundle, 300),
            concurrency=concurrency,
            normal_s=5,
            paused_s=paused_s,
            resumed_s=7,
            env={
                "RECO_DEV_MODE": "true",
                "RECO_LIVE_ITEMS_PATH": str(bundle.parent / f"live-hang-{concurrency}.jsonl"),
            },
        )
    }
    normal, paused, resumed = phases["normal"], phases["paused"], phases["resumed"]
    assert sum(p["failed"] for p in phases.values()) == 0
    if size == "tiny" and concurrency == 8:
        assert paused["p99_ms"] <= 2 * normal["p99_ms"], (paused["p99_ms"], normal["p99_ms"])
    trials = math.ceil(paused_s / reset_s)
    assert paused["cache_error"] <= concurrency + trials, paused  # the first wave and the trials, no more
    assert paused["event_read_error"] <= concurrency + trials, paused
    assert paused["cache_error"] + paused["event_read_error"] > 0  # it was seen
    assert paused["cache_bypass"] > 0  # the breaker skipped Redis, for the cache
    assert paused["event_read_bypass"] > 0  # ... and for the event store
    assert normal["cache_hit"] > 0
    assert resumed["cache_hit"] > 0  # hits come back after the next trial
