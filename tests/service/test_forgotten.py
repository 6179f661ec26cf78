"""A deleted user is forgotten at once: masked in the served bundle on the replica that deleted them at once, on
every other replica (its own in-process caches, one database) within the sync interval, and served exactly as a
brand-new user; `GET /v1/users/{id}` shows what the bundle still holds of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.store.forgotten import Forgotten
from tests.conftest import eventually


def items_of(client: TestClient, user_id: str) -> list[str]:
    response = client.post("/v1/recommendations", json={"user_id": user_id, "k": 10})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_masks_follow_the_bundles_data_time(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user = bundle.user_ids[0]
    forgotten = Forgotten()
    assert not forgotten.masks(user, bundle)
    assert forgotten.take([(1, user, 100.0), (2, "never-seen", 100.0)]) == [user, "never-seen"]
    assert forgotten.last_id == 2
    assert forgotten.masks(user, bundle)  # a bundle from files cannot tell: masked
    assert not forgotten.masks("never-seen", bundle)  # not in the bundle: nothing to mask
    read_later = replace(bundle, manifest=bundle.manifest.model_copy(update={"dataset": {"read_at": 100.0 + 400}}))
    assert not forgotten.masks(user, read_later)  # read from the database after the deletion: not in it
    read_before = replace(bundle, manifest=bundle.manifest.model_copy(update={"dataset": {"read_at": 50.0}}))
    assert forgotten.masks(user, read_before)
    # Within the clocks' slack before the read: masked all the same (the deleting replica's clock may be behind).
    read_just_after = replace(bundle, manifest=bundle.manifest.model_copy(update={"dataset": {"read_at": 160.0}}))
    assert forgotten.masks(user, read_just_after)
    assert forgotten.take([(2, user, 100.0)]) == []  # a row already held changes nothing
    assert forgotten.take([(3, user, 600.0)]) == [user]  # deleted again (after coming back)
    assert forgotten.masks(user, read_later)


def test_a_deleted_user_is_served_as_a_new_user_on_every_replica(settings: Settings, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user, item = bundle.user_ids[2], bundle.item_ids[5]
    # Two replicas of one service: one database, each its own in-process caches (no Redis: the hardest case,
    # nothing shared but the database), following it every 0.2 s.
    shared: dict[str, Any] = {"bundle_sync_s": 0.2, "live_items_store": "database"}
    with (
        TestClient(create_app(settings.model_copy(update=shared))) as a,
        TestClient(create_app(settings.model_copy(update=shared))) as b,
    ):
        before = items_of(b, user)
        assert a.post("/v1/events", json={"events": [{"user_id": user, "item_id": item}]}).status_code == 200
        assert items_of(b, user)  # replica b caches the user's events and embedding in process
        new_user = items_of(a, "never-seen-user")
        assert before != new_user  # the bundle's history shapes the user's list
        held = a.get(f"/v1/users/{user}").json()
        assert held["known_to_bundle"]
        assert not held["bundle"]["masked"]
        assert held["bundle"]["history_length"] == len(bundle.history(2)) > 0

        assert a.delete(f"/v1/users/{user}").status_code == 200
        assert items_of(a, user) == new_user  # the deleting replica: at once
        response = a.post("/v1/recommendations", json={"user_id": user, "k": 10}).json()
        assert response["fallback"] == "unknown_user"
        assert eventually(lambda: items_of(b, user) == new_user, seconds=5.0)  # the other: within the sync
        shown = b.get(f"/v1/users/{user}").json()
        assert shown["bundle"]["masked"]
        assert shown["known_to_bundle"]
        assert shown["events"] == []
        assert b.get("/admin/users/" + user).json()["history_length"] == 0

        # Back after the deletion: only what they did since counts, as for anyone new with the same events.
        for who in (user, "another-new-user"):
            assert a.post("/v1/events", json={"events": [{"user_id": who, "item_id": item}]}).status_code == 200
        assert items_of(a, user) == items_of(a, "another-new-user")

    # A replica started after the deletion masks the user from its first request.
    with TestClient(create_app(settings)) as c:
        assert c.get(f"/v1/users/{user}").json()["bundle"]["masked"]
        assert items_of(c, user) == items_of(c, "another-new-user")
