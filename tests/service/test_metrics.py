from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.core.bundle import MANIFEST, load_bundle
from service.core.settings import Settings
from service.recommend.pipeline import Query


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_after_traffic(client: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[-1]  # "300": not a value any label legitimately takes (schema_version "3" is one)
    for _ in range(3):
        assert client.post("/v1/recommendations", json={"user_id": user_id, "k": 5}).status_code == 200
    assert client.post("/v1/recommendations", json={"user_id": "stranger", "k": 5}).status_code == 200
    assert client.post("/v1/recommendations", json={"user_id": user_id, "k": 0}).status_code == 422
    m = scrape(client)
    route = "/v1/recommendations"
    assert m[("reco_http_requests_total", (("method", "POST"), ("route", route), ("status", "200")))] == 4
    assert m[("reco_http_requests_total", (("method", "POST"), ("route", route), ("status", "422")))] == 1
    ok = (("method", "POST"), ("route", route), ("status", "200"))
    assert m[("reco_http_request_duration_seconds_count", ok)] == 4
    assert m[("reco_http_request_duration_seconds_sum", ok)] > 0
    bad = (("method", "POST"), ("route", route), ("status", "422"))
    assert m[("reco_http_request_duration_seconds_count", bad)] == 1
    # One miss, then hits from the in-process cache; the unknown user never touches the cache.
    assert m[("reco_cache_requests_total", (("result", "miss"),))] == 1
    assert m[("reco_cache_requests_total", (("result", "hit"),))] == 2
    assert m[("reco_fallbacks_total", (("reason", "unknown_user"),))] == 1
    assert m[("reco_errors_total", (("type", "validation"),))] == 1
    for stage in ("cache", "retrieval", "filtering", "ranking"):
        count = m[("reco_stage_duration_seconds_count", (("stage", stage),))]
        assert count >= 4 if stage != "cache" else count >= 3
        assert m[("reco_stage_duration_seconds_sum", (("stage", stage),))] > 0
    assert m[("reco_stage_duration_seconds_count", (("stage", "user_encoding"),))] == 1
    # 100 candidates asked for: retrieval returns them all; filtering removes the seen ones.
    assert m[("reco_candidates_count", (("stage", "retrieved"),))] == 4
    assert m[("reco_candidates_sum", (("stage", "retrieved"),))] >= 4 * 100
    assert m[("reco_candidates_sum", (("stage", "after_filtering"),))] <= 4 * 100
    info = [k for k in m if k[0] == "reco_bundle_info"]
    assert len(info) == 1
    assert ("version", bundle.version) in info[0][1]
    assert m[("reco_ready", ())] == 1.0
    # No user ids in any label.
    assert not any(user_id == v or v == "stranger" for _, labels in m for _, v in labels)
    # Unmatched paths are one label, not one series per path.
    client.get("/does/not/exist/123")
    assert (
        "reco_http_requests_total",
        (("method", "GET"), ("route", "unmatched"), ("status", "404")),
    ) in scrape(client)


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, service.api.app, service.recommend.pipeline, service.core.bundle; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'model_export' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_stage_metrics_are_per_request_and_a_batch_counts_once(client: TestClient) -> None:
    """A micro-batch with one cached user and one to encode: user_encoding is recorded for the one encoded only;
    the batch's own stage times are recorded once, in their own metric, whatever its size."""
    state = client.app.state.reco  # type: ignore[attr-defined]
    pipeline, recommender = state.pipeline, state.recommender
    cached = pipeline.encode(np.array([3]))[0]
    before = scrape(client)
    answers = recommender.run_batch([Query(3, cached, 5, 50), Query(4, None, 5, 50)])
    assert "user_encoding" not in answers[0].timings  # its embedding was given
    assert answers[1].timings["user_encoding"] > 0
    assert answers[0].batch_timings is answers[1].batch_timings
    after = scrape(client)

    def grew(name: str, stage: str) -> float:
        key = (name, (("stage", stage),))
        return after[key] - before.get(key, 0.0)

    for stage in ("user_encoding", "retrieval", "filtering", "ranking"):
        assert grew("reco_batch_stage_duration_seconds_count", stage) == 1
    assert after[("reco_batch_size_count", ())] - before.get(("reco_batch_size_count", ()), 0) == 1
    assert after[("reco_batch_size_sum", ())] - before.get(("reco_batch_size_sum", ()), 0) == 2
    # Per request, through the API: a hit records no user_encoding, and each request records its queue wait.
    user_id = "1"
    client.post("/v1/recommendations", json={"user_id": user_id, "k": 5})
    first = scrape(client)
    client.post("/v1/recommendations", json={"user_id": user_id, "k": 5})  # a hit
    second = scrape(client)
    for name, more in (("user_encoding", 0), ("queue", 1), ("ranking", 1)):
        key = ("reco_stage_duration_seconds_count", (("stage", name),))
        assert second[key] - first[key] == more, name


def test_the_service_retrieves_the_bundles_depth_unless_told(
    tiny_bundle: Path, settings: Settings, tmp_path: Path
) -> None:
    """RECO_NUM_CANDIDATES unset: the ANN search gives a known user the manifest's candidates.depth (the depth its
    exporter chose on validation, on known users) and an unknown one candidates.new_user_depth; set, it overrides
    both. The tiny bundle's ranker ranks the ANN's candidates alone, so each request ranks that many (its
    catalogue leaves enough after the seen items)."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["candidates"] |= {"depth": 37, "new_user_depth": 45}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    user_id = load_bundle(copy).user_ids[0]
    for num_candidates, known, unknown in ((None, 37, 45), (50, 50, 50)):
        told = settings.model_copy(update={"bundle_path": copy, "num_candidates": num_candidates})
        with TestClient(create_app(told)) as c:
            for user in (user_id, user_id, "stranger"):
                assert c.post("/v1/recommendations", json={"user_id": user, "k": 5}).status_code == 200
            m = scrape(c)
        after = (("stage", "after_filtering"),)
        assert m[("reco_candidates_count", after)] == 3
        assert m[("reco_candidates_sum", after)] == 2 * known + unknown
