"""Structured logs: JSON access records with request ids; user ids never in clear."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.logs import JsonFormatter, UserHasher
from service.core.settings import Settings

SECRET_USER = "alice-secret-user-7"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("httpx"):  # the test client's own log of the URLs it calls
            self.lines.append(self.format(record))


@pytest.fixture
def captured(settings: Settings) -> Iterator[tuple[TestClient, Capture]]:
    capture = Capture()
    root = logging.getLogger()
    with TestClient(create_app(settings.model_copy(update={"log_user_key": "k" * 16}))) as client:
        root.addHandler(capture)
        try:
            yield client, capture
        finally:
            root.removeHandler(capture)


def test_access_records_are_json_with_the_request_id_and_no_user_id(captured: tuple[TestClient, Capture]) -> None:
    client, capture = captured
    r = client.post("/v1/recommendations", json={"user_id": SECRET_USER, "k": 3}, headers={"x-request-id": "req-1"})
    assert r.status_code == 200
    assert r.json()["request_id"] == "req-1"
    assert r.headers["x-request-id"] == "req-1"
    generated = client.post("/v1/recommendations", json={"user_id": SECRET_USER, "k": 3})
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.headers["x-request-id"] == generated.json()["request_id"]
    assert client.delete(f"/v1/users/{SECRET_USER}").status_code == 200
    client.get("/healthz", headers={"x-request-id": "bad id with spaces"})

    records = [json.loads(line) for line in capture.lines]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "reco.access"]
    assert [a["route"] for a in access] == [
        "/v1/recommendations",
        "/v1/recommendations",
        "/v1/users/{user_id}",
        "/healthz",
    ]
    first = access[0]
    assert first["request_id"] == "req-1"
    assert first["status"] == 200
    assert first["duration_ms"] > 0
    assert first["user"] == UserHasher("k" * 16)(SECRET_USER) != SECRET_USER
    assert access[3]["request_id"] != "bad id with spaces"
    assert not [line for line in capture.lines if SECRET_USER in line]


def test_user_hash_is_keyed() -> None:
    assert UserHasher("a" * 16)("42") == UserHasher("a" * 16)("42")
    assert UserHasher("a" * 16)("42") != UserHasher("b" * 16)("42")
    assert UserHasher(None)("42") != UserHasher(None)("42")  # a random key per process when unset
