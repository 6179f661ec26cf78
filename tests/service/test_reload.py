"""Hot reload: a new bundle swapped in under traffic with no failed request; a corrupt one refused while the old
one keeps serving; rollback; cache keys never mix versions."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.core.settings import Settings

TOKEN = "reload-admin-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_reload_under_traffic_then_refuse_a_corrupt_bundle_then_roll_back(
    settings: Settings, tiny_bundle: Path, second_bundle: Path, tmp_path: Path
) -> None:
    served = tmp_path / "current"
    served.symlink_to(tiny_bundle)
    app = create_app(settings.model_copy(update={"bundle_path": served, "admin_token": SecretStr(TOKEN)}))
    with TestClient(app) as client:
        version_a = client.get("/readyz").json()["bundle_version"]
        stop = threading.Event()
        seen: list[tuple[int, str]] = []

        def traffic(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                r = client.post("/v1/recommendations", json={"user_id": str(1 + (worker + n) % 40), "k": 5})
                seen.append((r.status_code, r.json().get("bundle_version", r.text)))

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(traffic, w) for w in range(4)]
            while len(seen) < 20:
                time.sleep(0.01)
            served.unlink()
            served.symlink_to(second_bundle)  # a deploy re-points `current`, then asks for a reload
            reloaded = client.post("/admin/reload", headers=AUTH)
            n_at_swap = len(seen)
            while len(seen) < n_at_swap + 20:
                time.sleep(0.01)
            stop.set()
            for f in futures:
                f.result()
        assert reloaded.status_code == 200, reloaded.text
        version_b = reloaded.json()["bundle_version"]
        assert reloaded.json()["previous_version"] == version_a
        assert version_b != version_a
        assert {status for status, _ in seen} == {200}  # no failed request during the swap
        versions = [v for _, v in seen]
        assert versions[0] == version_a
        assert versions[-1] == version_b
        first_b = versions.index(version_b)
        assert version_a not in versions[first_b + 8 :]  # switched for good (a few in flight may finish on A)

        # Cache keys carry the bundle version: B's requests never read A's embeddings.
        cache = client.app.state.reco.cache  # type: ignore[attr-defined]
        keys = list(cache._entries)
        assert {k.split(":")[1] for k in keys} == {version_a, version_b}

        # Only from under the bundles root (by default the directory holding `current`'s target: now
        # second_bundle's): anywhere else is a 403 that says nothing of the path, existing or not.
        for outside in (tiny_bundle.parent / "nope", Path("/etc"), tmp_path.parent / "x\x00y"):
            denied = client.post("/admin/reload", json={"bundle_path": str(outside)}, headers=AUTH)
            assert denied.status_code == 403, denied.text
            assert denied.json()["message"] == (
                "body.bundle_path: bundles are loaded from under the bundles root (RECO_BUNDLES_ROOT) only"
            )
        # A corrupt bundle is refused with its reason; B keeps serving.
        corrupt = second_bundle.parent / "corrupt"
        shutil.copytree(second_bundle, corrupt)
        (corrupt / "item_embeddings.npy").write_bytes(b"not the file the manifest hashed")
        refused = client.post("/admin/reload", json={"bundle_path": str(corrupt)}, headers=AUTH)
        assert refused.status_code == 409
        assert "item_embeddings.npy" in refused.json()["message"]
        assert f"still serving {version_b}" in refused.json()["message"]
        r = client.post("/v1/recommendations", json={"user_id": "1", "k": 5})
        assert r.json()["bundle_version"] == version_b

        # Rollback returns to A.
        back = client.post("/admin/rollback", headers=AUTH)
        assert back.status_code == 200, back.text
        assert back.json() == {"previous_version": version_b, "bundle_version": version_a}
        assert client.post("/v1/recommendations", json={"user_id": "1", "k": 5}).json()["bundle_version"] == version_a
        metrics = client.get("/metrics").text
        assert 'reco_bundle_reloads_total{result="ok"} 2.0' in metrics
        assert 'reco_bundle_reloads_total{result="refused"} 4.0' in metrics
        assert json.loads(json.dumps(client.get("/readyz").json()))["bundle_version"] == version_a


def test_reload_needs_the_admin_token_and_rollback_needs_a_reload(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"admin_token": SecretStr(TOKEN)}))) as client:
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/rollback", headers=AUTH).status_code == 409
        assert client.post("/admin/reload", json={"unknown": 1}, headers=AUTH).status_code == 422


def test_a_published_bundle_that_does_not_load_is_refused_once_and_the_old_one_keeps_serving(
    settings: Settings, tmp_path: Path
) -> None:
    """The registry names a version this replica cannot load (not on its disk): it keeps serving what it has,
    counts the refusal once (not every round), and the retrain gauges come from the registry's runs."""
    from service.store import registry
    from service.store.schema import migrate, open_engine

    database = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    migrate(database)
    engine = open_engine(database, 5.0)
    window = {"first": 0, "last": 1, "events": 1, "users": 1, "items": 1}
    registry.register(engine, "not-on-this-disk", window, {}, "first", publish=True)
    started = time.time()
    registry.record_retrain(engine, started - 30, "failed", None, "boom")
    registry.record_retrain(engine, started - 20, "failed", None, "boom")
    registry.record_retrain(engine, started - 10, "published", "not-on-this-disk", "")
    registry.record_retrain(engine, started - 5, "failed", None, "boom")
    engine.dispose()
    update = {"database_url": SecretStr(database), "bundle_sync_s": 0.05}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        served = client.get("/readyz").json()["bundle_version"]
        time.sleep(1.0)  # some 20 rounds
        assert client.get("/readyz").json()["bundle_version"] == served
        registry_ = client.app.state.metrics.registry  # type: ignore[attr-defined]
        assert registry_.get_sample_value("reco_bundle_reloads_total", {"result": "refused"}) == 1.0
        assert registry_.get_sample_value("reco_retrain_consecutive_failures") == 1.0
        assert registry_.get_sample_value("reco_retrain_last_duration_seconds") is not None
        assert registry_.get_sample_value("reco_bundle_created_timestamp_seconds") > 0
