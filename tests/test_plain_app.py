"""The reference app `benchmarks.serve` compares the service with: it answers as the service's route does (k items
the user has not seen) from the same bundle, so the two measure the same work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from benchmarks.plain_app import create_app, mlp_model
from service.core.bundle import load_bundle


def test_the_mlp_scores_each_candidate() -> None:
    session = ort.InferenceSession(mlp_model(8), providers=["CPUExecutionProvider"])
    items = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    user = np.ones((1, 8), np.float32)
    scores = session.run(None, {"user": user, "items": items})[0]
    assert scores.shape == (5, 1)
    alone = session.run(None, {"user": user, "items": items[2:3]})[0]
    np.testing.assert_allclose(alone[0], scores[2], rtol=1e-5)  # a candidate's score does not depend on the others


def test_the_plain_app_answers_unseen_items_of_the_same_bundle(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAIN_BUNDLE", str(tiny_bundle))
    bundle = load_bundle(tiny_bundle)
    with TestClient(create_app()) as client:
        assert client.get("/readyz").status_code == 200
        for user in range(5):
            response = client.post("/v1/recommendations", json={"user_id": bundle.user_ids[user], "k": 10})
            assert response.status_code == 200
            items = [bundle.item_index[i["item_id"]] for i in response.json()["items"]]
            assert len(items) == 10
            assert not np.isin(items, bundle.seen(user)).any()
        assert client.post("/v1/recommendations", json={"user_id": "nobody", "k": 10}).status_code == 404
