"""Hostile input: schemathesis generates over 1,000 requests from the service's own OpenAPI schema and runs all
its checks (no server error, responses and status codes as documented, invalid data rejected, valid data
accepted) against a real uvicorn process, admin endpoints included."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import uvicorn_server, venv_tool

TOKEN = "schemathesis-admin-token-01"


def test_schemathesis_finds_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    env = {
        "RECO_BUNDLE_PATH": str(tiny_bundle),
        "RECO_ADMIN_TOKEN": TOKEN,
        "RECO_API_KEY": "schemathesis-client-key-01",  # the admin token is accepted on client routes too
        "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live.jsonl"),
        "RECO_ACCESS_LOG": "false",
        "RECO_WARMUP_REQUESTS": "1",
    }
    st = venv_tool("st")
    with uvicorn_server(env) as (url, _):
        # The stateful phase is left out: it sends query values that are objects in its model but plain strings
        # on the wire (valid ones), and counts their acceptance as a failure.
        command = [st, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "150"]
        command += ["--phases", "examples,coverage,fuzzing", "--seed", "1", "-H", f"Authorization: Bearer {TOKEN}"]
        # cwd: schemathesis keeps a cache (.schemathesis/) in its working directory, never in the checkout.
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated is not None, summary
    assert int(generated.group(1)) >= 1000
    assert generated.group(1) == generated.group(2)
