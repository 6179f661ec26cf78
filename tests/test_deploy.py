"""Deployment files checked offline: the alert rules and the Grafana dashboard name only metrics the service
exports (read from a real scrape), and promtool accepts the rules, their unit tests, the scrape config and
every dashboard expression."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import venv_tool

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "reco.json"
PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and os.environ.get("RECO_TEST_REQUIRE_PROMTOOL") == "1":
    raise RuntimeError("RECO_TEST_REQUIRE_PROMTOOL=1 but promtool is not installed (Debian package prometheus)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_expressions() -> list[str]:
    return re.findall(r"expr: \|?\s*\n?\s*(.+)", (DEPLOY / "prometheus" / "alerts.yml").read_text())


def metric_names(expr: str) -> set[str]:
    """The service's metric names an expression reads (label matchers and strings removed first)."""
    bare = re.sub(r'"[^"]*"', "", re.sub(r"\{[^}]*\}", "", expr))
    return set(re.findall(r"\breco_[a-zA-Z0-9_:]*", bare))


def test_every_expression_names_exported_metrics(client: TestClient) -> None:
    client.post("/v1/recommendations", json={"user_id": "1", "k": 5})  # every stage and the batcher report
    scraped = {
        line.split("{")[0].split(" ")[0]
        for line in client.get("/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    expressions = dashboard_expressions() + alert_expressions()
    assert len(expressions) >= 12
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        assert names <= scraped, (expr, names - scraped)


@needs_promtool
def test_promtool_accepts_rules_tests_config_and_dashboard_expressions(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    prometheus = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", str(prometheus / "alerts.yml")],
        ["test", "rules", str(prometheus / "alerts_test.yml")],
        ["check", "config", str(prometheus / "prometheus.yml")],
    ):
        run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    rules = tmp_path / "dashboard_rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for n, expr in enumerate(dashboard_expressions()):
        lines += [f"      - record: dashboard:expr_{n}", f"        expr: {json.dumps(expr)}"]
    rules.write_text("\n".join(lines) + "\n")
    run = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(dashboard_expressions())} rules found" in run.stdout


@needs_promtool
def test_promtool_accepts_a_real_scrape(client: TestClient) -> None:
    assert PROMTOOL is not None
    client.post("/v1/recommendations", json={"user_id": "1", "k": 5})
    scrape = client.get("/metrics").text
    run = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr  # no error and no lint finding (names, units, help)


def test_dockerfile_lints_clean_and_the_service_image_has_a_healthcheck() -> None:
    # Every runnable stage's non-root USER: tests/test_deploy_manifests.py.
    dockerfile = DEPLOY.parent / "Dockerfile"
    final_stage = dockerfile.read_text().rsplit("\nFROM ", 1)[1]
    assert "HEALTHCHECK" in final_stage
    run = subprocess.run([venv_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
