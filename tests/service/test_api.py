from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from model_export.export_onnx import FP16_TOLERANCE
from service.api.app import create_app
from service.api.schemas import RecommendationResponse
from service.core.bundle import BundleError, load_bundle
from service.core.settings import Settings


def recommend(client: TestClient, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_happy_path(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[0]
    body = recommend(client, user_id=user_id, k=10)
    assert body["bundle_version"] == bundle.version
    assert body["user_id"] == user_id
    assert body["fallback"] is None
    assert len(body["request_id"]) == 32
    items = body["items"]
    ids = [it["item_id"] for it in items]
    assert len(ids) == 10
    assert len(set(ids)) == 10
    assert set(ids) <= set(bundle.item_ids)
    ranking = [it["ranking_score"] for it in items]
    assert ranking == sorted(ranking, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in ranking)
    assert all(-1.0001 <= it["retrieval_score"] <= 1.0001 for it in items)
    assert items[0]["title"] == bundle.item_titles[bundle.item_index[ids[0]]]


def test_scores_match_the_bundle_embeddings(client: TestClient, tiny_bundle: Path) -> None:
    """The retrieval score in a response is the real inner product of the user and item embeddings."""
    bundle = load_bundle(tiny_bundle)
    pipeline = client.app.state.reco.pipeline  # type: ignore[attr-defined]
    user = 5
    embedding = pipeline.encode(np.array([user]))[0]
    body = recommend(client, user_id=bundle.user_ids[user], k=5)
    for item in body["items"]:
        expected = float(bundle.item_embeddings[bundle.item_index[item["item_id"]]] @ embedding)
        assert item["retrieval_score"] == pytest.approx(expected, abs=1e-5)


def test_the_response_is_exactly_what_the_response_model_makes(client: TestClient, tiny_bundle: Path) -> None:
    """The route builds its JSON from plain dicts: the bytes must be the RecommendationResponse model's own, for a
    known user, with explanations (the user has history), and for the unknown-user fallback (explanations None)."""
    bundle = load_bundle(tiny_bundle)
    for body in (
        {"user_id": bundle.user_ids[0], "k": 10},
        {"user_id": bundle.user_ids[1], "k": 4, "explain": True},
        {"user_id": "nobody-knows-me", "k": 3, "explain": True},
    ):
        response = client.post("/v1/recommendations", json=body)
        assert response.status_code == 200, response.text
        model = RecommendationResponse.model_validate_json(response.content)
        assert model.model_dump_json().encode() == response.content
        assert len(model.items) == body["k"]
        if body.get("explain") and body["user_id"] in bundle.user_index:
            assert all(item.because is not None for item in model.items)


def test_integer_user_id_is_accepted(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    numeric = bundle.user_ids[2]
    assert numeric.isdigit()
    assert recommend(client, user_id=int(numeric), k=3)["user_id"] == numeric


def test_seen_and_excluded_items_never_returned(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    users = range(0, bundle.manifest.dims.n_users, 7)
    # Seen is every rating: the low ones (negative feedback) too, which most of these users have.
    assert sum(len(bundle.negatives(u)) > 0 for u in users) > len(users) // 2
    for user in users:
        seen = {bundle.item_ids[i] for i in bundle.seen(user)}
        first = [it["item_id"] for it in recommend(client, user_id=bundle.user_ids[user], k=20)["items"]]
        assert not seen & set(first)
        exclude = [*first[:5], "no-such-item"]
        second = recommend(client, user_id=bundle.user_ids[user], k=20, exclude_item_ids=exclude)["items"]
        ids = {it["item_id"] for it in second}
        assert not ids & set(exclude)
        assert not ids & seen
        assert len(ids) == 20


def test_repeats_when_allowed_but_never_negative_feedback(tiny_bundle: Path, settings: Settings) -> None:
    bundle = load_bundle(tiny_bundle)
    repeats = settings.model_copy(update={"allow_repeats": True})
    returned_positives = 0
    with TestClient(create_app(repeats)) as c:
        for user in range(0, bundle.manifest.dims.n_users, 7):
            ids = {it["item_id"] for it in recommend(c, user_id=bundle.user_ids[user], k=50)["items"]}
            assert not ids & {bundle.item_ids[i] for i in bundle.negatives(user)}
            returned_positives += len(ids & {bundle.item_ids[i] for i in bundle.history(user)})
    assert returned_positives > 0


def test_unknown_user_gets_fallback(client: TestClient) -> None:
    body = recommend(client, user_id="never-seen-user", k=10)
    assert body["fallback"] == "unknown_user"
    assert len({it["item_id"] for it in body["items"]}) == 10


def test_k_larger_than_catalogue_after_filtering(tiny_bundle: Path, settings: Settings) -> None:
    bundle = load_bundle(tiny_bundle)
    n_items = bundle.manifest.dims.n_items
    wide = settings.model_copy(update={"max_k": 1000, "num_candidates": 1000})
    with TestClient(create_app(wide)) as c:
        user = int(np.argmax(np.diff(bundle.history_offsets)))
        items = recommend(c, user_id=bundle.user_ids[user], k=1000)["items"]
        assert len(items) == n_items - len(bundle.seen(user))  # every rating counts as seen


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "1", "k": 0}, "body.k"),
        ({"user_id": "1", "k": 51}, "body.k"),
        ({"user_id": "1", "k": "ten"}, "body.k"),
        ({"k": 10}, "body.user_id"),
        ({"user_id": "", "k": 10}, "body.user_id"),
        ({"user_id": True, "k": 10}, "body.user_id"),
        ({"user_id": "1", "exclude_item_ids": "5"}, "body.exclude_item_ids"),
        ({"user_id": "1", "exclude_item_ids": [None]}, "body.exclude_item_ids.0"),
        ({"user_id": "1", "color": "red"}, "body.color"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert field in payload["message"]
    assert any(".".join(map(str, d["loc"])) == field for d in payload["detail"])


def test_malformed_json_and_wrong_method(client: TestClient) -> None:
    response = client.post("/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "body" in response.json()["message"]
    response = client.post("/v1/recommendations", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert client.get("/v1/recommendations").status_code == 405
    assert client.get("/nope").status_code == 404


def test_request_id_header_is_echoed(client: TestClient) -> None:
    response = client.post("/v1/recommendations", json={"user_id": "1", "k": 1}, headers={"x-request-id": "abc-123"})
    assert response.json()["request_id"] == "abc-123"


def test_health_and_readiness(client: TestClient, tiny_bundle: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["bundle_version"] == load_bundle(tiny_bundle).version
    # device=auto: the GPU wherever this process has one (the GPU machine), the CPU elsewhere.
    assert body["onnx_providers"][0] == ("CUDAExecutionProvider" if cuda_onnx() else "CPUExecutionProvider")
    assert body["faiss_device"] == ("cuda" if faiss.get_num_gpus() > 0 else "cpu")
    # float16 models on CUDA (the test bundle has them), float32 on the CPU.
    precision = "fp16" if cuda_onnx() else "fp32"
    assert body["onnx_precisions"] == {"user_tower": precision, "ranker": precision}
    assert body["cache_backend"] == "local"


def cuda_onnx() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_device_cpu_forces_the_cpu(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"device": "cpu"}))) as c:
        body = c.get("/readyz").json()
        assert body["onnx_providers"] == ["CPUExecutionProvider"]
        assert body["faiss_device"] == "cpu"
        assert len(recommend(c, user_id="1", k=5)["items"]) == 5


def test_device_cuda_without_a_gpu_fails_clearly(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"device": "cuda"}))
    if cuda_onnx() and faiss.get_num_gpus() > 0:
        with TestClient(app) as c:
            assert c.get("/readyz").json()["faiss_device"] == "cuda"
    else:
        with pytest.raises(RuntimeError, match="device=cuda but"), TestClient(app):
            pass


def test_gpu_and_cpu_agree(settings: Settings, tiny_bundle: Path) -> None:
    """Where a GPU serves, its recommendations match the CPU's (same items, scores within float tolerance: float32's,
    or float16's where the GPU runs the float16 models)."""
    bundle = load_bundle(tiny_bundle)
    with (
        TestClient(create_app(settings)) as auto,
        TestClient(create_app(settings.model_copy(update={"device": "cpu"}))) as cpu,
    ):
        half = "fp16" in auto.get("/readyz").json()["onnx_precisions"].values()
        tolerance = FP16_TOLERANCE if half else 1e-4
        for user in range(0, 60, 6):
            a = recommend(auto, user_id=bundle.user_ids[user], k=10)["items"]
            b = recommend(cpu, user_id=bundle.user_ids[user], k=10)["items"]
            # Float differences may swap an item at the candidate or top-k boundary, nothing more.
            assert len({i["item_id"] for i in a} & {i["item_id"] for i in b}) >= 9
            scores_b = {i["item_id"]: i["ranking_score"] for i in b}
            for item in a:
                if item["item_id"] in scores_b:
                    assert item["ranking_score"] == pytest.approx(scores_b[item["item_id"]], abs=tolerance)


def test_bad_bundle_is_refused_at_startup(tiny_bundle: Path, tmp_path: Path, settings: Settings) -> None:
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"]["items.faiss"]["sha256"] = "0" * 64
    (broken / "manifest.json").write_text(json.dumps(manifest))
    app = create_app(settings.model_copy(update={"bundle_path": broken}))
    with pytest.raises(BundleError, match=r"items\.faiss: sha256"), TestClient(app):
        pass


def test_openapi_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/recommendations" in schema["paths"]
    assert "422" in schema["paths"]["/v1/recommendations"]["post"]["responses"]
