"""Admin and client routes refuse a request without its token before anything else; the app's routes are walked,
so a route added later is checked without anyone listing it here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.api.app import API_ROUTERS, UI_ROUTERS, create_app
from service.core.settings import Settings

ADMIN = "test-admin-token-0123456789"
CLIENT = "test-client-key-0123456789"
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# The dashboard's pages: the app's shell, no data (everything it shows comes from the guarded routes).
OPEN |= {"/ui", "/ui/", "/ui/bundles", "/ui/users/", "/ui/users/{user_id}", "/ui/items/", "/ui/items/{item_id}"}
OPEN |= {"/ui/experiments", "/ui/experiments/{name}"}
ADMIN_ROUTES = {
    ("PUT", "/v1/items/{item_id}"),
    ("DELETE", "/v1/users/{user_id}"),
    ("GET", "/v1/users/{user_id}"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/rollback"),
    ("GET", "/admin/overview"),
    ("GET", "/admin/users/{user_id}"),
    ("GET", "/admin/items/{item_id}"),
    ("GET", "/admin/bundles"),
    ("POST", "/admin/bundles/{version}/publish"),
    ("POST", "/admin/bundles/rollback"),
    ("POST", "/admin/experiments"),
    ("GET", "/admin/experiments"),
    ("POST", "/admin/experiments/{name}/start"),
    ("POST", "/admin/experiments/{name}/stop"),
    ("GET", "/admin/experiments/{name}/results"),
    ("GET", "/admin/guard"),
}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.fixture
def guarded(settings: Settings, tmp_path: Path) -> TestClient:
    update = {
        "admin_token": SecretStr(ADMIN),
        "api_key": SecretStr(CLIENT),
        "dev_mode": False,
        "live_items_path": tmp_path / "live.jsonl",
    }
    return TestClient(create_app(settings.model_copy(update=update)))


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation the app serves: its OpenAPI schema's, plus the routers' own routes (hidden ones too)."""
    schema = client.get("/openapi.json").json()
    out = {(method.upper(), path) for path, operations in schema["paths"].items() for method in operations}
    for router in API_ROUTERS + UI_ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute):
                out |= {(method, route.path) for method in route.methods}
    return sorted(out)


def test_every_route_but_health_and_metrics_needs_a_token(guarded: TestClient) -> None:
    """Each route, with a body that would not even parse: no token is a 401 and a wrong one a 403, never a 400
    or 422 (the token is checked before the body is read). Admin routes refuse the client key."""
    with guarded as client:
        found = routes(client)
        assert set(found) >= ADMIN_ROUTES
        assert ("GET", "/metrics") in found  # the hidden routes are walked too
        checked = 0
        for method, path in found:
            if path in OPEN:
                if path.startswith("/ui"):
                    assert client.request(method, concrete(path)).status_code == 200, path  # the shell, no data
                continue
            url = concrete(path)
            garbage = {"content": b"{not json", "headers": {"content-type": "application/json"}}
            missing = client.request(method, url, **garbage)
            assert missing.status_code == 401, (method, path, missing.text)
            assert "header.authorization" in missing.json()["message"]
            wrong = client.request(method, url, content=b"{", headers={"authorization": "Bearer " + "x" * 26})
            assert wrong.status_code == 403, (method, path)
            as_client = client.request(method, url, content=b"{", headers={"authorization": f"Bearer {CLIENT}"})
            if (method, path) in ADMIN_ROUTES:
                assert as_client.status_code == 403, (method, path)  # a client key is not an admin token
            else:
                assert as_client.status_code not in (401, 403), (method, path)
            checked += 1
        assert checked >= len(ADMIN_ROUTES) + 3  # recommendations, events, similar items too


def test_client_routes_take_the_api_key_or_the_admin_token(guarded: TestClient) -> None:
    body = {"user_id": "1", "k": 3}
    with guarded as client:
        for key in (CLIENT, ADMIN):
            r = client.post("/v1/recommendations", json=body, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200
            assert len(r.json()["items"]) == 3
        assert client.post("/v1/recommendations", json=body).status_code == 401  # the fast path hands it on
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_outside_dev_mode_the_service_needs_an_api_key_or_says_it_is_behind_a_gateway(tiny_bundle: Path) -> None:
    admin = SecretStr(ADMIN)
    with pytest.raises(ValidationError, match="RECO_API_KEY is not set") as refused:
        Settings(bundle_path=tiny_bundle, admin_token=admin)
    assert ADMIN not in str(refused.value)
    with pytest.raises(ValidationError, match="RECO_API_KEY must be at least 16 characters"):
        Settings(bundle_path=tiny_bundle, admin_token=admin, api_key="short")
    assert Settings(bundle_path=tiny_bundle, admin_token=admin, api_key=CLIENT).api_key == SecretStr(CLIENT)
    assert Settings(bundle_path=tiny_bundle, admin_token=admin, allow_anonymous=True).api_key is None
    assert Settings(bundle_path=tiny_bundle, dev_mode=True).api_key is None


def test_in_dev_mode_without_tokens_the_routes_are_open(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/recommendations", json={"user_id": "1", "k": 3}).status_code == 200
        assert client.post("/admin/rollback").status_code == 409  # open, and nothing to roll back to
