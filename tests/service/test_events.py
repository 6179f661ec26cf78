"""Real-time events, similar items and explanations, through the API and its lifespan."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.app import create_app
from service.core.bundle import Bundle, load_bundle
from service.core.settings import Settings
from tests.conftest import free_port, redis_available, refreshed


def recommend(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def post_events(client: TestClient, events: list[dict[str, object]]) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def genre_share(bundle: Bundle, item_ids: list[str], genre: int) -> float:
    return float(np.mean([bundle.item_dense[bundle.item_index[i], genre] > 0 for i in item_ids]))


def genre_items(bundle: Bundle, genre: int, avoid: set[int]) -> list[int]:
    """Items of this genre, fewest genres (the clearest signal) then most popular first, outside `avoid`."""
    n_genres = len([n for n in bundle.manifest.feature_spec.item_dense if n.startswith("genre:")])
    genres = bundle.item_dense[:, :n_genres] > 0
    of_genre = np.flatnonzero(genres[:, genre])
    order = np.lexsort((-bundle.item_log_popularity[of_genre], genres[of_genre].sum(axis=1)))
    return [int(i) for i in of_genre[order] if int(i) not in avoid]


def test_events_shift_the_next_list_toward_their_genre(client: TestClient, tiny_bundle: Path) -> None:
    # Per user, 10 clicks on the genre least present in their list; over a dozen users (one user's list can
    # move either way on a tiny model) the lists move toward the clicked genres.
    bundle = load_bundle(tiny_bundle)
    n_genres = len([n for n in bundle.manifest.feature_spec.item_dense if n.startswith("genre:")])
    shifts = []
    for user in range(12):
        user_id = bundle.user_ids[user]
        before = [it["item_id"] for it in recommend(client, user_id=user_id, k=20)["items"]]
        seen = set(bundle.seen(user).tolist())
        candidates = [g for g in range(n_genres) if len(genre_items(bundle, g, seen)) >= 15]
        genre = min(candidates, key=lambda g: genre_share(bundle, before, g))
        clicked = genre_items(bundle, genre, seen)[:10]
        events = [{"user_id": user_id, "item_id": bundle.item_ids[i], "event_type": "click"} for i in clicked]
        assert post_events(client, events) == {"accepted": 10, "users": 1, "duplicates": 0}
        after = [it["item_id"] for it in recommend(client, user_id=user_id, k=20)["items"]]
        shifts.append(genre_share(bundle, after, genre) - genre_share(bundle, before, genre))
        # The clicked items are now seen: never recommended again.
        assert not {bundle.item_ids[i] for i in clicked} & set(after)
    shift = np.array(shifts)
    assert shift.mean() > 0.02, shifts  # measured over 40 users: +0.06 to +0.07 of the list
    assert (shift > 0).sum() > 2 * (shift < 0).sum(), shifts


def test_event_refreshes_the_cached_embedding(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[7]
    first = recommend(client, user_id=user_id, k=5)["items"]
    top = first[0]["item_id"]
    # The next request is a cache hit and returns the same list.
    assert recommend(client, user_id=user_id, k=5)["items"] == first
    post_events(client, [{"user_id": user_id, "item_id": top, "event_type": "view"}])
    refreshed(client)  # after the answer, off the response path
    metrics = client.app.state.metrics  # type: ignore[attr-defined]
    hits = metrics.cache_requests.labels("hit")._value.get()
    encodes = metrics.stage_latency.labels("user_encoding")._sum.get()
    after = recommend(client, user_id=user_id, k=5)["items"]
    assert top not in [it["item_id"] for it in after]
    # Served from the embedding the event's refresh computed and cached: a hit, no new encoding.
    assert metrics.cache_requests.labels("hit")._value.get() == hits + 1
    assert metrics.stage_latency.labels("user_encoding")._sum.get() == encodes
    assert metrics.events.labels("view")._value.get() >= 1


def test_a_retried_event_refreshes_nothing_again(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]

    def stored() -> float:
        return registry.get_sample_value("reco_embedding_refreshes_total", {"result": "stored"}) or 0.0

    event = {"user_id": f"retry-{uuid.uuid4().hex[:8]}", "item_id": bundle.item_ids[3], "event_id": "retry-1"}
    before = stored()
    assert post_events(client, [event]) == {"accepted": 1, "users": 1, "duplicates": 0}
    refreshed(client)
    assert stored() == before + 1
    assert post_events(client, [event]) == {"accepted": 1, "users": 1, "duplicates": 1}  # the client's retry
    refreshed(client)
    assert stored() == before + 1  # the embedding for those events is already there


def test_an_events_batch_is_bounded_in_users_and_encodes_them_at_once(
    client: TestClient, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request naming many users: after the answer, each one's embedding is computed (as encoding that user
    alone gives) and cached, all in one user-encoder call; past RECO_MAX_EVENT_USERS_PER_REQUEST distinct users,
    a 422."""
    bundle = load_bundle(tiny_bundle)
    state = client.app.state.reco  # type: ignore[attr-defined]
    users = [f"batch-{uuid.uuid4().hex[:8]}-{n}" for n in range(40)]
    events = [{"user_id": u, "item_id": bundle.item_ids[n % 50], "event_type": "view"} for n, u in enumerate(users)]
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    recommender, pipeline = state.recommender, state.pipeline
    calls: list[int] = []
    encode = pipeline.encode

    def counted(users: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(len(users))
        return encode(users, *args, **kwargs)  # type: ignore[arg-type]

    def stored() -> float:
        return registry.get_sample_value("reco_embedding_refreshes_total", {"result": "stored"}) or 0.0

    before = stored()
    monkeypatch.setattr(pipeline, "encode", counted)
    assert post_events(client, events) == {"accepted": 40, "users": 40, "duplicates": 0}
    refreshed(client)
    monkeypatch.undo()
    assert calls == [40]  # one call for the 40 users
    assert stored() == before + 40
    for n in (0, 17, 39):
        fresh = asyncio.run(recommender.fresh_history(users[n]))
        cached, _ = asyncio.run(state.cache.get(recommender.cache_key(users[n], fresh)))
        alone = pipeline.encode(np.array([pipeline.user_index(users[n])]), [pipeline.history(-1, fresh.interactions)])
        np.testing.assert_allclose(cached, alone[0], atol=1e-5)
    limit = state.settings.max_event_users_per_request
    too_many = [{"user_id": f"u{n}", "item_id": bundle.item_ids[0]} for n in range(limit + 1)]
    response = client.post("/v1/events", json={"events": too_many})
    assert response.status_code == 422
    assert "body.events" in response.json()["message"]
    assert "distinct users" in response.json()["message"]


def test_dislike_filters_without_joining_the_history(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[11]
    first = recommend(client, user_id=user_id, k=5)
    disliked = first["items"][0]["item_id"]
    post_events(client, [{"user_id": user_id, "item_id": disliked, "event_type": "dislike"}])
    after = recommend(client, user_id=user_id, k=5)
    assert disliked not in [it["item_id"] for it in after["items"]]
    # The embedding did not change: the other items keep their retrieval scores.
    scores = {it["item_id"]: it["retrieval_score"] for it in first["items"]}
    for it in after["items"]:
        if it["item_id"] in scores:
            assert it["retrieval_score"] == pytest.approx(scores[it["item_id"]], abs=1e-6)


def test_new_user_is_personalised_by_events(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    anonymous = recommend(client, user_id="brand-new-user", k=10)
    assert anonymous["fallback"] == "unknown_user"
    liked = genre_items(bundle, 0, set())[:5]
    post_events(
        client,
        [
            {"user_id": "brand-new-user", "item_id": bundle.item_ids[i], "event_type": "like", "timestamp": 1000 + n}
            for n, i in enumerate(liked)
        ],
    )
    body = recommend(client, user_id="brand-new-user", k=10, explain=True)
    assert body["fallback"] is None
    ids = [it["item_id"] for it in body["items"]]
    assert ids != [it["item_id"] for it in anonymous["items"]]
    assert not {bundle.item_ids[i] for i in liked} & set(ids)
    # Explanations point into what the user did.
    assert all(it["because"]["item_id"] in {bundle.item_ids[i] for i in liked} for it in body["items"])


def test_event_validation_names_the_field(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    ok = {"user_id": "u", "item_id": bundle.item_ids[0]}
    unknown = client.post("/v1/events", json={"events": [ok, {"user_id": "u", "item_id": "no-such-item"}]})
    assert unknown.status_code == 404
    assert "events.1.item_id" in unknown.json()["message"]
    cases = [
        ({"events": []}, "events"),
        ({"events": [{**ok, "timestamp": False}]}, "events.0.timestamp"),
        ({"events": [{**ok, "event_type": "teleport"}]}, "events.0.event_type"),
        ({"events": [{**ok, "timestamp": -1}]}, "events.0.timestamp"),
        ({"events": [{**ok, "surprise": 1}]}, "events.0.surprise"),
        ({"events": [ok] * 1001}, "events"),
    ]
    for body, field in cases:
        response = client.post("/v1/events", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.json()["message"]


def test_similar_items(client: TestClient, tiny_bundle: Path) -> None:
    """The answer is the top k of the manifest's blend over the whole catalogue: two-tower cosine, and the
    co-consumption weight B[a, c] of the queried item a in each item c's neighbour list, scaled by a's largest."""
    bundle = load_bundle(tiny_bundle)
    spec = bundle.manifest.similar_items
    assert spec.co_consumption_weight > 0  # the tiny data's validation chose co-consumption (the test needs it)
    a = 4
    item_id = bundle.item_ids[a]
    response = client.get(f"/v1/items/{item_id}/similar", params={"k": 8, "explain": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"].startswith(spec.method)
    assert f"co-consumption {spec.co_consumption_weight:g}" in body["method"]
    items = body["items"]
    assert len(items) == 8
    ids = [it["item_id"] for it in items]
    assert item_id not in ids
    emb = bundle.item_embeddings
    cosine = emb @ emb[a]
    co = np.zeros(len(emb), dtype=np.float32)
    owners, slots = np.nonzero(bundle.item_neighbours == a)
    co[owners] = bundle.item_neighbour_weights[owners, slots]
    co /= co.max()
    blend = spec.embedding_weight * cosine + spec.co_consumption_weight * co
    rows = [bundle.item_index[i] for i in ids]
    np.testing.assert_allclose([it["score"] for it in items], blend[rows], atol=1e-5)
    np.testing.assert_allclose([it["reason"]["embedding_cosine"] for it in items], cosine[rows], atol=1e-5)
    np.testing.assert_allclose([it["reason"]["co_consumption"] for it in items], co[rows], atol=1e-5)
    blend[a] = -np.inf
    assert min(blend[rows]) >= np.sort(blend)[-8] - 1e-5  # exactly the 8 best (ties aside)
    assert client.get(f"/v1/items/{item_id}/similar", params={"k": 8}).json()["items"][0]["reason"] is None
    excluded = client.get(f"/v1/items/{item_id}/similar", params={"k": 8, "exclude_item_ids": ids[:2]}).json()
    assert not set(ids[:2]) & {it["item_id"] for it in excluded["items"]}
    missing = client.get("/v1/items/nope/similar")
    assert missing.status_code == 404
    assert "item_id" in missing.json()["message"]
    assert client.get(f"/v1/items/{item_id}/similar", params={"k": 51}).status_code == 422
    assert client.get(f"/v1/items/{item_id}/similar", params={"k": 0}).status_code == 422


def test_explanations_are_the_closest_history_item(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user = 2
    window = bundle.history(user)[-bundle.manifest.dims.history_length :]
    body = recommend(client, user_id=bundle.user_ids[user], k=5, explain=True)
    emb = bundle.item_embeddings
    for it in body["items"]:
        because = it["because"]
        sims = emb[window] @ emb[bundle.item_index[it["item_id"]]]
        assert because["item_id"] == bundle.item_ids[int(window[np.argmax(sims)])]
        assert because["similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
        assert because["title"] == bundle.item_titles[bundle.item_index[because["item_id"]]]
    assert all(it["because"] is None for it in recommend(client, user_id=bundle.user_ids[user], k=5)["items"])


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[tuple[TestClient, redis.Redis]]:
    if not redis_available():
        pytest.skip("no Redis server at 127.0.0.1:6379")
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:6379/15", "events_per_user": 4}))
    with TestClient(app) as client:
        yield client, redis.Redis(port=6379, db=15)


def test_redis_event_store_keeps_the_latest_events(
    redis_client: tuple[TestClient, redis.Redis], tiny_bundle: Path
) -> None:
    client, r = redis_client
    bundle = load_bundle(tiny_bundle)
    user_id = f"test-{uuid.uuid4().hex}"
    key = f"reco:events:{user_id}"
    try:
        items = [bundle.item_ids[i] for i in range(6)]
        events = [{"user_id": user_id, "item_id": i, "timestamp": 100 - n} for n, i in enumerate(items)]
        post_events(client, events)
        # Ordered by timestamp (the batch came newest first), capped at the latest 4, behind the cache's marker.
        assert [v.decode() for v in r.lrange(key, 0, -1)] == ["~", *items[::-1][-4:]]
        assert 0 < r.ttl(key) <= 30 * 86400
        ids = [it["item_id"] for it in recommend(client, user_id=user_id, k=10)["items"]]
        assert not set(items[::-1][-4:]) & set(ids)
    finally:
        r.delete(key)


def test_with_redis_down_events_are_stored_and_read_from_the_database(settings: Settings, tiny_bundle: Path) -> None:
    """Redis is only a cache of events: refused, the write is still acknowledged (the database has it) and the
    next recommendation reads it from the database."""
    refused = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(settings.model_copy(update={"redis_url": refused}))) as client:
        bundle = load_bundle(tiny_bundle)
        user_id = bundle.user_ids[3]
        before = {it["item_id"] for it in recommend(client, user_id=user_id, k=10)["items"]}
        clicked = sorted(before)[:2]
        events = [{"user_id": user_id, "item_id": i} for i in clicked]
        assert client.post("/v1/events", json={"events": events}).status_code == 200
        after = {it["item_id"] for it in recommend(client, user_id=user_id, k=10)["items"]}
        assert not set(clicked) & after  # now seen: the database's events reached the request
        metrics = client.app.state.metrics  # type: ignore[attr-defined]
        assert metrics.event_store_errors.labels("write")._value.get() == 0
        assert (
            metrics.event_store_errors.labels("read")._value.get()
            + metrics.event_store_errors.labels("read_bypass")._value.get()
            >= 1
        )


def test_with_the_database_down_writes_are_503_and_recommendations_still_served(
    settings: Settings, tiny_bundle: Path
) -> None:
    """The system of record unreachable: an event write is a 503 with Retry-After (nothing acknowledged),
    recommendations are served from the bundle and the cache, and /readyz reports the database."""
    down = SecretStr(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    update = {"database_url": down, "database_migrate": False, "database_timeout_s": 0.5}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        bundle = load_bundle(tiny_bundle)
        response = client.post("/v1/events", json={"events": [{"user_id": "1", "item_id": bundle.item_ids[0]}]})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "database" in response.json()["message"]
        assert "127.0.0.1" not in response.json()["message"]  # no connection details in an error
        assert recommend(client, user_id=bundle.user_ids[0], k=5)["items"]
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database_status"] == "unreachable"
        metrics = client.app.state.metrics  # type: ignore[attr-defined]
        assert metrics.event_store_errors.labels("write")._value.get() == 1
        assert metrics.event_store_errors.labels("database_read")._value.get() >= 1
