"""Graceful shutdown of a real uvicorn process: SIGTERM during traffic turns readiness 503 at once, requests keep
being served while traffic moves away, none is dropped, and the process exits within the grace period."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import uvicorn_server


def get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def recommend(url: str, user: int) -> int:
    body = json.dumps({"user_id": str(user), "k": 5}).encode()
    request = urllib.request.Request(url + "/v1/recommendations", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def test_sigterm_drains_without_dropping_requests(tiny_bundle: Path, tmp_path: Path) -> None:
    env = {
        "RECO_BUNDLE_PATH": str(tiny_bundle),
        "RECO_DEV_MODE": "true",
        "RECO_SHUTDOWN_DELAY_S": "1.5",
        "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live.jsonl"),
        "RECO_WARMUP_REQUESTS": "1",
    }
    with uvicorn_server(env, "--timeout-graceful-shutdown", "10") as (url, server):
        stop_traffic = threading.Event()
        outcomes: list[tuple[float, object]] = []
        lock = threading.Lock()

        def traffic(worker: int) -> None:
            n = 0
            while not stop_traffic.is_set():
                n += 1
                try:
                    result: object = recommend(url, 1 + (worker * 1000 + n) % 50)
                except Exception as e:
                    result = repr(e)
                with lock:
                    outcomes.append((time.monotonic(), result))

        threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        sigterm_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        status = 200
        while status == 200 and time.monotonic() - sigterm_at < 1.0:
            status = get(url + "/readyz")
        not_ready_after = time.monotonic() - sigterm_at
        time.sleep(0.5)  # a load balancer would take this long to stop sending
        stop_traffic.set()
        for t in threads:
            t.join(10)
        exit_code = server.wait(15)
        exited_after = time.monotonic() - sigterm_at

    assert status == 503
    assert not_ready_after < 0.5
    failures = [r for _, r in outcomes if r != 200]
    assert not failures, failures[:5]
    served_while_draining = [r for at, r in outcomes if at > sigterm_at + not_ready_after]
    assert len(served_while_draining) > 10  # readiness was off, but requests were still answered
    assert len(outcomes) > 50
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert exited_after < 10
