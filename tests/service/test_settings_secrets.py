"""A bad setting is reported by name, never by value: tokens and URLs with passwords stay off stderr and logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.core.settings import Settings

TOKEN = "short-secret-7"  # too short: refused
PASSWORD = "hunter2-redis-pass"


def test_a_refused_setting_does_not_echo_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("RECO_REDIS_URL", f"redis://reco:{PASSWORD}@127.0.0.1:6379/0")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "RECO_ADMIN_TOKEN must be at least" in message  # says what is wrong
    assert TOKEN not in message
    assert PASSWORD not in message


def test_python_m_service_reports_a_bad_setting_without_its_secrets() -> None:
    env = os.environ | {
        "RECO_ADMIN_TOKEN": TOKEN,
        "RECO_REDIS_URL": f"redis://reco:{PASSWORD}@127.0.0.1:6379/0",
        "RECO_CACHE_TTL_S": "not-a-number",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "invalid settings" in output
    assert "cache_ttl_s" in output  # the field is named
    assert TOKEN not in output
    assert PASSWORD not in output
    assert "not-a-number" not in output
