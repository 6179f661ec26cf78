"""Admin security (token required outside dev mode, 401/403) and privacy (DELETE /v1/users/{id} forgets a user)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.store.cache import LocalEmbeddingCache, is_user_key
from tests.conftest import free_port, redis_available, refreshed

TOKEN = "test-admin-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_settings_refuse_a_missing_or_weak_admin_token_outside_dev_mode(tiny_bundle: Path) -> None:
    with pytest.raises(ValidationError, match="RECO_ADMIN_TOKEN is not set"):
        Settings(bundle_path=tiny_bundle)
    for weak in ("", "short", "changeme", "CHANGEME"):
        with pytest.raises(ValidationError, match="at least 16 characters"):
            Settings(bundle_path=tiny_bundle, admin_token=weak, dev_mode=True)
    assert Settings(bundle_path=tiny_bundle, admin_token=TOKEN, allow_anonymous=True).admin_token == SecretStr(TOKEN)
    assert Settings(bundle_path=tiny_bundle, dev_mode=True).admin_token is None


def test_admin_endpoints_answer_401_without_and_403_with_a_wrong_token(settings: Settings, tmp_path: Path) -> None:
    # The item PUT persists: to this test's own file, not beside the session's shared bundle.
    update = {"admin_token": SecretStr(TOKEN), "dev_mode": False, "live_items_path": tmp_path / "live.jsonl"}
    app = create_app(settings.model_copy(update=update))
    item = {"title": "A new film", "genres": ["g01"], "year": 2020}
    with TestClient(app) as client:
        for call in (
            lambda h: client.delete("/v1/users/1", headers=h),
            lambda h: client.put("/v1/items/new-x", json=item, headers=h),
        ):
            assert call({}).status_code == 401
            assert call({"authorization": "Basic abc"}).status_code == 401
            wrong = call({"authorization": "Bearer " + "x" * len(TOKEN)})
            assert wrong.status_code == 403
            assert "admin token" in wrong.json()["message"]
            assert call(AUTH).status_code == 200


def test_user_keys_are_told_apart() -> None:
    digest = "0123456789abcdef"
    assert is_user_key("reco:v1:user_emb:42", "42")
    assert is_user_key(f"reco:v2:user_emb:42:ev:{digest}", "42")
    assert not is_user_key("reco:v1:user_emb:420", "42")
    assert not is_user_key(f"reco:v1:user_emb:420:ev:{digest}", "42")
    assert not is_user_key("reco:v1:user_emb:42:other", "42")
    assert not is_user_key("reco:events:42", "42")


def test_delete_user_in_process(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user, other = bundle.user_ids[3], bundle.user_ids[4]
    for u in (user, other):
        assert client.post("/v1/recommendations", json={"user_id": u, "k": 5}).status_code == 200
    event = {"user_id": user, "item_id": bundle.item_ids[0]}
    assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    refreshed(client)  # the embedding after the event, cached after the answer
    cache: LocalEmbeddingCache = client.app.state.reco.cache  # type: ignore[attr-defined]
    before = len(cache)
    response = client.delete(f"/v1/users/{user}")
    assert response.status_code == 200
    assert response.json() == {"events_deleted": True, "embeddings_deleted": 2}  # plain + after-events keys
    assert len(cache) == before - 2
    assert client.delete(f"/v1/users/{user}").json() == {"events_deleted": False, "embeddings_deleted": 0}
    assert client.post("/v1/recommendations", json={"user_id": other, "k": 5}).status_code == 200


def test_delete_user_leaves_nothing_in_redis_or_the_database(settings: Settings, tiny_bundle: Path) -> None:
    if not redis_available():
        pytest.skip("no Redis server at 127.0.0.1:6379")
    r = redis.Redis(port=6379, db=15)
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:6379/15"}))
    bundle = load_bundle(tiny_bundle)
    user = f"privacy-{uuid.uuid4().hex}"
    other = f"privacy-{uuid.uuid4().hex}"
    old_version_key = f"reco:old-bundle-version:user_emb:{user}"
    r.set(old_version_key, np.zeros(4, np.float32).tobytes())  # cached by an earlier bundle
    try:
        with TestClient(app) as client:
            for u in (user, other):
                events = [{"user_id": u, "item_id": bundle.item_ids[i]} for i in range(3)]
                assert client.post("/v1/events", json={"events": events}).status_code == 200
                assert client.post("/v1/recommendations", json={"user_id": u, "k": 5}).status_code == 200

            def keys_of(u: str) -> list[bytes]:
                return [k for k in r.scan_iter(match="*", count=1000) if u.encode() in k]

            assert len(keys_of(user)) == 3  # events list, embedding after events, the old bundle's embedding
            response = client.delete(f"/v1/users/{user}")
            assert response.status_code == 200
            assert response.json() == {"events_deleted": 3, "embeddings_deleted": 2}
            assert keys_of(user) == []
            held = client.get(f"/v1/users/{user}").json()  # the right of access: nothing is left
            assert held["events"] == []
            assert held["first_seen"] is None
            assert client.get(f"/v1/users/{other}").json()["events"] != []
            assert len(keys_of(other)) == 2  # nobody else is touched
            metrics = client.get("/metrics").text
            assert "reco_user_deletions_total 1.0" in metrics
    finally:
        for k in r.scan_iter(match="*privacy-*"):
            r.delete(k)


def test_delete_user_is_a_503_when_redis_is_down(settings: Settings) -> None:
    refused = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(settings.model_copy(update={"redis_url": refused}))) as client:
        response = client.delete("/v1/users/1")
        assert response.status_code == 503
        assert "did not take the delete" in response.json()["message"]
