"""Items added while serving: embedded by the bundle's ONNX text encoder and item tower, live at once, persisted."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.items.item_encoder import ItemEncoder
from service.recommend.features import item_dense_row, item_text
from service.recommend.similar import SimilarityWeights

NEW = {"title": "Quantum Gardens (2031)", "genres": ["g01", "g02"], "year": 2029, "description": "A calm film."}


@pytest.fixture
def live_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"live_items_path": tmp_path / "live.jsonl"})


def test_text_encoder_in_the_service_matches_sentence_transformers(tiny_bundle: Path) -> None:
    from model_export.text import embed_texts, load_encoder

    bundle = load_bundle(tiny_bundle)
    assert bundle.manifest.dims.text_dim == 384
    assert bundle.manifest.onnx_parity_max_abs_diff["text_encoder"] <= 1e-4
    encoder = ItemEncoder(bundle, ["CPUExecutionProvider"], 1)
    texts = ["Toy Story (1995). Genres: Animation, Children's, Comedy.", "x", "A much longer text " * 40]
    np.testing.assert_allclose(encoder.embed_texts(texts), embed_texts(load_encoder(), texts), atol=1e-5)


def test_put_item_is_live_at_once_and_survives_a_restart(live_settings: Settings, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    n = bundle.manifest.dims.n_items
    with TestClient(create_app(live_settings)) as client:
        response = client.put("/v1/items/new-1", json=NEW)
        assert response.status_code == 200, response.text
        assert response.json() == {"item_id": "new-1", "created": True, "n_items": n + 1}
        state = client.app.state.reco  # type: ignore[attr-defined]
        pipeline = state.pipeline
        new = pipeline.bundle.item_index["new-1"]
        assert new == n
        # Its embedding is the encoder's, from content alone, and it is in the index.
        names = bundle.manifest.feature_spec.item_dense
        dense = item_dense_row(names, NEW["genres"], NEW["year"])[None, :]
        expected = state.live_items._encoder.encode(dense, [item_text(NEW["title"], NEW["genres"], NEW["description"])])
        np.testing.assert_allclose(pipeline.bundle.item_embeddings[new], expected[0], atol=1e-6)
        _, top = pipeline.retriever.search(expected, 1)
        assert top[0, 0] == new
        # Findable as similar, both ways.
        similar = client.get("/v1/items/new-1/similar", params={"k": 5}).json()["items"]
        assert len(similar) == 5
        nearest = similar[0]["item_id"]
        # The other way by cosine (a new item has no co-consumption yet, which the blend may weigh above it).
        back = pipeline.similar(pipeline.bundle.item_index[nearest], 50, weights=SimilarityWeights(1.0, 0.0))
        assert new in back.items
        # Recommendable: the user closest to it gets it among the ranked candidates.
        users = np.arange(bundle.manifest.dims.n_users)
        user_emb = pipeline.encode(users)
        user = int(np.argmax(user_emb @ pipeline.bundle.item_embeddings[new]))
        recs = pipeline.recommend(user, user_emb[user], 100, 100)
        assert new in recs.items.tolist()
        # An event on it works (the user tower skips live items) and it is then seen.
        uid = bundle.user_ids[user]
        assert client.post("/v1/events", json={"events": [{"user_id": uid, "item_id": "new-1"}]}).status_code == 200
        ids = [
            it["item_id"] for it in client.post("/v1/recommendations", json={"user_id": uid, "k": 50}).json()["items"]
        ]
        assert "new-1" not in ids
        metrics = client.get("/metrics").text
        assert f"reco_index_items {float(n + 1)}" in metrics
        assert 'reco_item_upserts_total{result="created"} 1.0' in metrics
    # Persisted in the system of record: a restart re-applies it.
    engine = sa.create_engine(live_settings.database)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT item_id FROM live_items")).scalars().all() == ["new-1"]
    engine.dispose()
    assert not live_settings.live_items_path.exists()  # type: ignore[union-attr]  # no file in database mode
    with TestClient(create_app(live_settings)) as client:
        assert client.get("/v1/items/new-1/similar", params={"k": 3}).status_code == 200
        assert client.app.state.reco.pipeline.retriever.n_items == n + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("store", ["database", "file"])
def test_an_item_put_on_one_instance_is_served_by_the_other(settings: Settings, tmp_path: Path, store: str) -> None:
    """Two instances sharing the store (the database, or on one machine the file): an item PUT on one is
    recommendable and findable on the other within RECO_LIVE_ITEMS_SYNC_S."""
    shared = {
        "live_items_store": store,
        "live_items_path": tmp_path / "shared.jsonl",
        "live_items_sync_s": 0.1,
        "workers": 1,
    }
    one = create_app(settings.model_copy(update=shared))
    other = create_app(settings.model_copy(update=shared))
    with TestClient(one) as a, TestClient(other) as b:
        if store == "file":  # a single process follows the file only with several workers: ask it once
            b.app.state.reco.live_items.sync()  # type: ignore[attr-defined]
        assert a.put("/v1/items/shared-1", json=NEW).json()["created"] is True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if store == "file":
                b.app.state.reco.live_items.sync()  # type: ignore[attr-defined]
            found = b.get("/v1/items/shared-1/similar", params={"k": 3})
            if found.status_code == 200:
                break
            time.sleep(0.05)
        assert found.status_code == 200, found.text
        assert b.put("/v1/items/shared-1", json=NEW).json()["created"] is False  # the same item: idempotent
        other_content = NEW | {"title": "Something else"}
        assert b.put("/v1/items/shared-1", json=other_content).status_code == 409


def test_put_item_conflicts_and_idempotence(live_settings: Settings, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    with TestClient(create_app(live_settings)) as client:
        trained = client.put(f"/v1/items/{bundle.item_ids[0]}", json=NEW)
        assert trained.status_code == 409
        assert "item_id" in trained.json()["message"]
        assert client.put("/v1/items/new-2", json=NEW).json()["created"] is True
        again = client.put("/v1/items/new-2", json=NEW)
        assert again.status_code == 200
        assert again.json()["created"] is False
        assert client.put("/v1/items/new-2", json={**NEW, "title": "Other"}).status_code == 409
        for body, field in [({"genres": ["g01"]}, "title"), ({**NEW, "year": 3000}, "year"), ({**NEW, "x": 1}, "x")]:
            response = client.put("/v1/items/new-3", json=body)
            assert response.status_code == 422
            assert field in response.json()["message"]


def test_admin_token_guards_item_upserts(live_settings: Settings) -> None:
    token = "s3cret-s3cret-s3cret"
    with TestClient(create_app(live_settings.model_copy(update={"admin_token": SecretStr(token)}))) as client:
        assert client.put("/v1/items/new-4", json=NEW).status_code == 401
        assert client.put("/v1/items/new-4", json=NEW, headers={"authorization": "Bearer nope"}).status_code == 403
        ok = client.put("/v1/items/new-4", json=NEW, headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200


def test_a_trained_items_twin_takes_its_place_and_its_similar_items(live_settings: Settings, tiny_bundle: Path) -> None:
    """A trained item PUT again under a new id (its title, genres and year) gets the original's embedding, the
    original as its most similar item, then the original's own similar items (its co-consumption too)."""
    bundle = load_bundle(tiny_bundle)
    names = bundle.manifest.feature_spec.item_dense
    original = 7
    genres = [
        n.removeprefix("genre:")
        for j, n in enumerate(names)
        if n.startswith("genre:") and bundle.item_dense[original, j]
    ]
    year = round(float(bundle.item_dense[original, names.index("release_year")]) * 130 + 1900)
    body = {"title": bundle.item_titles[original], "genres": genres, "year": year}
    with TestClient(create_app(live_settings)) as client:
        assert client.put("/v1/items/twin-7", json=body).status_code == 200
        pipeline = client.app.state.reco.pipeline  # type: ignore[attr-defined]
        twin = pipeline.bundle.item_index["twin-7"]
        np.testing.assert_allclose(pipeline.bundle.item_embeddings[twin], bundle.item_embeddings[original], atol=1e-6)
        similar = [it["item_id"] for it in client.get("/v1/items/twin-7/similar", params={"k": 6}).json()["items"]]
        own = [
            it["item_id"]
            for it in client.get(f"/v1/items/{bundle.item_ids[original]}/similar", params={"k": 5}).json()["items"]
        ]
        assert similar[0] == bundle.item_ids[original]
        assert similar[1:] == [i for i in own if i != "twin-7"][:5]
        # Other content: the item tower's embedding, no twin.
        assert client.put("/v1/items/other", json=NEW).status_code == 200
        assert pipeline.bundle.item_index["other"] not in pipeline.twins
