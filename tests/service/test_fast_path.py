"""POST /v1/recommendations and POST /v1/events on the fast path (service.api.fast_path) answer exactly as through
FastAPI's routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import service.api.fast_path
from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.errors import Unavailable
from service.core.settings import Settings

Case = tuple[str, bytes, dict[str, str]]  # (name, body, headers): what a client may send, valid or not


@pytest.fixture
def clients(settings: Settings) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path on, fast path off), otherwise the same settings (the in-process cache: no shared state)."""
    small = settings.model_copy(update={"max_body_bytes": 4096, "max_exclusions": 3, "max_event_users_per_request": 3})
    with (
        # A 500 is a response here, as for a real client (the test client re-raises the server's error).
        TestClient(create_app(small), raise_server_exceptions=False) as fast,
        TestClient(
            create_app(small.model_copy(update={"http_fast_path": False})), raise_server_exceptions=False
        ) as routed,
    ):
        yield fast, routed


def cases(user_ids: list[str], item_ids: list[str]) -> list[Case]:
    """(name, body, headers): what a client may send, valid or not."""
    as_json = {"content-type": "application/json"}

    def body(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    return [
        ("known user", body(user_id=user_ids[0], k=5), as_json),
        ("default k", body(user_id=user_ids[1]), as_json),
        ("exclusions", body(user_id=user_ids[2], k=4, exclude_item_ids=item_ids[:2]), as_json),
        ("explain", body(user_id=user_ids[3], k=3, explain=True), as_json),
        ("unknown user", body(user_id="nobody-knows-me", k=5), as_json),
        ("integer id, k 4.0", b'{"user_id": ' + user_ids[4].encode() + b', "k": 4.0}', as_json),
        ("charset", body(user_id=user_ids[5], k=2), {"content-type": "application/json; charset=utf-8"}),
        ("duplicate key", b'{"user_id": "a", "user_id": "' + user_ids[6].encode() + b'", "k": 2}', as_json),
        ("k above max_k (a check inside)", body(user_id=user_ids[0], k=51), as_json),
        ("too many exclusions (inside)", body(user_id=user_ids[0], exclude_item_ids=item_ids[:4]), as_json),
        ("k 0", body(user_id=user_ids[0], k=0), as_json),
        ("k true", body(user_id=user_ids[0], k=True), as_json),
        ("k 2.5", body(user_id=user_ids[0], k=2.5), as_json),
        ("empty user id", body(user_id="", k=2), as_json),
        ("no user id", body(k=2), as_json),
        ("extra field", body(user_id=user_ids[0], k=2, page=3), as_json),
        ("explain 'yes'", body(user_id=user_ids[0], explain="yes"), as_json),
        ("NaN", b'{"user_id": "1", "k": NaN}', as_json),
        ("not JSON", b'{"user_id": ', as_json),
        ("a list", b"[1, 2]", as_json),
        ("empty body", b"", as_json),
        ("text/plain", body(user_id=user_ids[0], k=2), {"content-type": "text/plain"}),
        ("no content type", body(user_id=user_ids[0], k=2), {}),
        ("too large", body(user_id=user_ids[0], k=2, exclude_item_ids=["x" * 100] * 50), as_json),
    ]


def comparable(response: Any) -> tuple[int, str | None, str | None, Any]:
    try:
        content: Any = response.json()
    except ValueError:
        content = response.text
    if isinstance(content, dict):
        content.pop("request_id", None)  # new for every request
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
        content,
    )


def taking(monkeypatch: pytest.MonkeyPatch, path: str) -> list[object]:
    """The bodies the fast path answers `path` for, from now on (a list that fills as it does)."""
    taken: list[object] = []
    route = service.api.fast_path.ROUTES[path]

    async def counting(*args: Any) -> bytes:
        taken.append(args[1])
        return await route.answer(*args)

    fast_route = service.api.fast_path.FastRoute(path, route.model, counting)
    monkeypatch.setitem(service.api.fast_path.ROUTES, path, fast_route)
    return taken


def event_cases(item_ids: list[str], client: str) -> list[Case]:
    """(name, body, headers) for POST /v1/events; event ids of `client`'s own (both clients share a database)."""
    as_json = {"content-type": "application/json"}

    def body(*events: dict[str, Any]) -> bytes:
        return json.dumps({"events": list(events)}).encode()

    one = {"user_id": f"fast-path-{client}", "item_id": item_ids[0]}
    return [
        ("one event", body(one), as_json),
        ("a batch", body(one, {**one, "item_id": item_ids[1], "event_type": "dislike", "timestamp": 5.0}), as_json),
        ("with an event id", body({**one, "event_id": f"{client}-1"}), as_json),
        ("the same event id again", body({**one, "event_id": f"{client}-1"}), as_json),
        ("unknown item (a check inside)", body({**one, "item_id": "no-such-item"}), as_json),
        ("too many users (inside)", body(*({**one, "user_id": f"{client}-{n}"} for n in range(4))), as_json),
        ("unknown event type", body({**one, "event_type": "purchase-ish"}), as_json),
        ("no events", body(), as_json),
        ("no user id", body({"item_id": item_ids[0]}), as_json),
        ("not JSON", b'{"events": [', as_json),
        ("text/plain", body(one), {"content-type": "text/plain"}),
        ("too large", body(*({**one, "item_id": "x" * 100} for _ in range(50))), as_json),
    ]


def same_answers(
    clients: tuple[TestClient, TestClient],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    fast_cases: list[Case],
    routed_cases: list[Case],
) -> dict[str, int]:
    """Post each case to `path` with the fast path on and off: the same answer either way, and the fast path
    taken exactly for valid JSON bodies (errors raised inside included; the others are FastAPI's). Each case's
    status by name."""
    fast, routed = clients
    taken = taking(monkeypatch, path)
    statuses = {}
    for (name, body, headers), (_, routed_body, _) in zip(fast_cases, routed_cases, strict=True):
        taken.clear()
        got = comparable(fast.post(path, content=body, headers=headers))
        expected = comparable(routed.post(path, content=routed_body, headers=headers))
        assert got == expected, name
        statuses[name] = got[0]
        assert bool(taken) == (got[0] == 200 or "inside" in name), name
    return statuses


def test_every_event_request_gets_the_same_answer_with_and_without_the_fast_path(
    clients: tuple[TestClient, TestClient], tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item_ids = load_bundle(tiny_bundle).item_ids
    fast_cases = event_cases(item_ids, "fast")
    statuses = same_answers(clients, monkeypatch, "/v1/events", fast_cases, event_cases(item_ids, "routed"))
    assert statuses["one event"] == statuses["a batch"] == 200
    assert clients[0].post("/v1/events", content=fast_cases[3][1], headers={}).status_code == 422
    assert statuses["unknown item (a check inside)"] == 404
    assert statuses["too many users (inside)"] == statuses["unknown event type"] == 422
    assert statuses["too large"] == 413


def test_every_request_gets_the_same_answer_with_and_without_the_fast_path(
    clients: tuple[TestClient, TestClient], tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(tiny_bundle)
    all_cases = cases(bundle.user_ids, bundle.item_ids)
    statuses = same_answers(clients, monkeypatch, "/v1/recommendations", all_cases, all_cases)
    assert statuses["known user"] == 200
    assert statuses["k above max_k (a check inside)"] == statuses["k 0"] == 422
    assert statuses["not JSON"] == statuses["no content type"] == 422
    assert statuses["too large"] == 413
    assert statuses["text/plain"] == 422


@pytest.mark.parametrize(
    ("error", "status", "counted"),
    [
        (RuntimeError("secret detail"), 500, "RuntimeError"),
        (Unavailable("the event store is down"), 503, "unavailable"),
    ],
)
def test_errors_raised_while_answering_are_rendered_the_same_either_way(
    clients: tuple[TestClient, TestClient],
    monkeypatch: pytest.MonkeyPatch,
    tiny_bundle: Path,
    error: Exception,
    status: int,
    counted: str,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    body = {"user_id": load_bundle(tiny_bundle).user_ids[0], "k": 3}
    answers = []
    for client in clients:
        monkeypatch.setattr(client.app.state.reco.recommender, "recommend", broken)  # type: ignore[attr-defined]
        response = client.post("/v1/recommendations", json=body)
        answers.append(comparable(response))
        assert "secret" not in response.text
        metrics = client.get("/metrics").text
        assert f'reco_errors_total{{type="{counted}"}} 1.0' in metrics
        route = f'reco_http_requests_total{{method="POST",route="/v1/recommendations",status="{status}"}} 1.0'
        assert route in metrics
    assert answers[0] == answers[1]
    assert answers[0][0] == status
    assert answers[0][2] == ("1" if status == 503 else None)  # Retry-After


def test_fast_path_requests_are_counted_under_the_route(
    clients: tuple[TestClient, TestClient], tiny_bundle: Path
) -> None:
    fast, _ = clients
    user = load_bundle(tiny_bundle).user_ids[0]
    for _ in range(3):
        assert fast.post("/v1/recommendations", json={"user_id": user, "k": 2}).status_code == 200
    metrics = fast.get("/metrics").text
    assert 'reco_http_requests_total{method="POST",route="/v1/recommendations",status="200"} 3.0' in metrics
