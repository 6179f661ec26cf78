"""A real Prometheus server scrapes a real service every second: the target comes up, the request rate sent
shows in a PromQL query through Prometheus's HTTP API, and the alert rules load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, uvicorn_server
from tests.test_deploy import DEPLOY

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("RECO_TEST_REQUIRE_PROMTOOL") == "1":
    raise RuntimeError("RECO_TEST_REQUIRE_PROMTOOL=1 but prometheus is not installed (Debian package prometheus)")


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_prometheus_scrapes_the_service_and_loads_the_alert_rules(tiny_bundle: Path, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    env = {"RECO_BUNDLE_PATH": str(tiny_bundle), "RECO_DEV_MODE": "true", "RECO_WARMUP_REQUESTS": "1"}
    env["RECO_LIVE_ITEMS_PATH"] = str(tmp_path / "live.jsonl")
    with uvicorn_server(env) as (url, _):
        target = url.removeprefix("http://")
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
        config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("recsys:8000", target)
        (tmp_path / "prometheus.yml").write_text(config)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}"]
        command += [f"--storage.tsdb.path={tmp_path / 'data'}"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: any(t["health"] == "up" for t in api(base, "targets")["activeTargets"]), 60, "target up")
            body = json.dumps({"user_id": "1", "k": 5}).encode()
            stop = threading.Event()

            def traffic() -> None:  # steady, so the counter moves between scrapes
                while not stop.is_set():
                    request = urllib.request.Request(
                        url + "/v1/recommendations", body, {"content-type": "application/json"}
                    )
                    with urllib.request.urlopen(request, timeout=5) as r:
                        assert r.status == 200
                    time.sleep(0.01)

            sender = threading.Thread(target=traffic)
            sender.start()
            query = 'sum(rate(reco_http_requests_total{route="/v1/recommendations"}[10s]))'
            try:
                result = wait_for(
                    lambda: [s for s in api(base, "query", query=query)["result"] if float(s["value"][1]) > 0],
                    60,
                    "a request rate through Prometheus",
                )
            finally:
                stop.set()
                sender.join(10)
            assert float(result[0]["value"][1]) > 0
            groups = api(base, "rules")["groups"]
            alerts = {rule["name"] for group in groups for rule in group["rules"]}
            assert {"RecsysHighP99Latency", "RecsysHighErrorRatio", "RecsysCacheUnavailable"} <= alerts
            assert "RecsysNoBundleLoaded" in alerts
        finally:
            server.terminate()
            server.wait(20)
