from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from model_export.build import build_bundle
from model_export.build_index import build_index, recall_vs_exact
from model_export.config import IndexConfig, preset
from model_export.data import Interactions, generate_synthetic
from model_export.evaluate import (
    bootstrap_interval,
    choose_depth,
    choose_int8,
    coverage,
    mean_metrics,
    per_user_metrics,
    pipeline_recommendations,
    users_with_relevant,
)
from model_export.export_onnx import FP16_TOLERANCE, HalfPrecision, ParityError, export, export_fp16, parity
from service.api.app import create_app
from service.core.bundle import MANIFEST, Bundle, load_bundle
from service.core.settings import Settings
from service.recommend.pipeline import Pipeline
from tests.conftest import ML100K

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_records_everything(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    assert manifest["schema_version"] == 6
    candidates = manifest["candidates"]
    assert (candidates["item_item"], candidates["popular"]) == (0, 0)  # off for the ranker by default
    # Never worse than a source alone on validation: the ordering served is the best of the table.
    validation = manifest["metrics"]["validation"]
    by_ranking = {k.removeprefix("ranking="): v for k, v in validation.items() if k.startswith("ranking=")}
    assert set(by_ranking) == {"ranker", "gbm", "item_item", "two_tower", "popular"}
    best = max(m["ndcg@10"] for m in by_ranking.values())
    assert by_ranking[manifest["metrics"]["ranking"]["best_on_validation"]]["ndcg@10"] == best
    assert candidates["ranking"] == manifest["metrics"]["ranking"]["chosen"] == "ranker"  # the tiny preset's choice
    # The ANN depth: the tiny preset's 100 candidates are the least the grid tries, so it is served.
    assert candidates["depth"] == manifest["metrics"]["depth"]["chosen"] == 100
    assert validation["depth=100"]["ndcg@10"] == by_ranking["ranker"]["ndcg@10"]
    assert manifest["bundle_version"] == tiny_bundle.name
    assert {"negative_offsets.npy", "negative_items.npy", "item_content.npy"} <= set(manifest["files"])
    # The content vectors' weights (the text carries the weight), and the similar-items blend with the
    # validation that chose it.
    content = manifest["content"]
    assert content["text_weight"] > content["categories_weight"] > content["year_weight"] > 0
    similar = manifest["similar_items"]
    assert similar["embedding_weight"] + similar["co_consumption_weight"] == pytest.approx(1.0)
    grid = similar["validation"]["by_co_consumption_share"]
    assert grid[f"{similar['co_consumption_weight']:g}"]["ndcg@10"] == max(g["ndcg@10"] for g in grid.values())
    # Fitted on everything: the served histories hold every positive, the held-out ones included.
    assert manifest["dataset"]["fit"] == "all"
    assert manifest["dataset"]["served_positives"] == manifest["dataset"]["n_positives"]
    assert manifest["dataset"]["n_heldout"] > 0
    assert "refitted on all interactions" in manifest["metrics"]["model"]
    parities = manifest["onnx_parity_max_abs_diff"]
    assert set(parities) == {"user_tower", "item_tower", "ranker", "ranker_gbm", "text_encoder"}
    assert all(0 <= d <= 1e-4 for d in parities.values())
    # The gradient-boosted ranker: trained with early stopping, its file listed, its candidates recorded.
    gbm = manifest["training"]["final"]["gbm"]
    assert 1 <= gbm["trees"] <= manifest["training"]["config"]["gbm"]["trees"]
    assert gbm["events"] > 0
    assert gbm["examples"] > gbm["events"]
    assert {"ranker_gbm.onnx", "item_transitions.npy", "item_transition_weights.npy"} <= set(manifest["files"])
    assert manifest["dims"]["item_transitions"] == manifest["training"]["config"]["gbm"]["transitions"]
    assert candidates["gbm_transitions"] == manifest["training"]["config"]["gbm"]["transition_candidates"]
    assert candidates["gbm_popular"] == manifest["training"]["config"]["gbm"]["popular_candidates"]
    assert candidates["gbm_item_item"] == manifest["training"]["config"]["gbm"]["item_item_candidates"] > 0
    # The per-request models in float16 too, within the float16 tolerance of float32 PyTorch, their files listed.
    assert set(manifest["onnx_fp16_parity_max_abs_diff"]) == {"user_tower", "ranker"}
    assert all(0 <= d <= FP16_TOLERANCE for d in manifest["onnx_fp16_parity_max_abs_diff"].values())
    assert {"user_tower.fp16.onnx", "ranker.fp16.onnx"} <= set(manifest["files"])
    # ... and with int8 weights (for the CPU, served when asked for), their distance from float32 recorded.
    assert set(manifest["onnx_int8_parity"]) == {"user_tower", "ranker"}
    assert {"user_tower.int8.onnx", "ranker.int8.onnx"} <= set(manifest["files"])
    assert manifest["index"]["type"] == "IndexFlatIP"
    assert manifest["index"]["recall_vs_exact"] == 1.0
    assert manifest["training"]["config"]["preset"] == "tiny"
    for name in ("most_popular", "retrieval", "pipeline"):
        m = manifest["metrics"]["validation"][name]
        assert 0.0 <= m["recall@10"] <= 1.0
        assert 0.0 <= m["ndcg@10"] <= 1.0
    assert "rating >= 4" in manifest["feature_spec"]["positive_rule"]
    # Atomic write: no temporary directory left, `current` points at the new bundle.
    siblings = [p.name for p in tiny_bundle.parent.iterdir()]
    assert not [s for s in siblings if s.startswith(".")]
    assert (tiny_bundle.parent / "current").resolve() == tiny_bundle.resolve()
    # No pickles: every array loads with allow_pickle=False.
    for name in manifest["files"]:
        if name.endswith(".npy"):
            np.load(tiny_bundle / name, allow_pickle=False)


def test_parity_check_fails_when_onnx_and_torch_disagree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    inputs = {"x": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)}
    path = tmp_path / "m.onnx"
    export(model, inputs, "y", path)
    assert parity(model, path, inputs) < 1e-6
    with torch.no_grad():
        model[0].bias += 1e-3  # the exported graph no longer matches the module
    with pytest.raises(ParityError, match=r"m\.onnx: ONNX Runtime differs from PyTorch by"):
        parity(model, path, inputs)
    # Dynamic batch axis: another batch size runs.
    out = ort.InferenceSession(str(path)).run(None, {"x": np.zeros((3, 4), np.float32)})[0]
    assert out.shape == (3, 3)


class _Scorer(torch.nn.Module):
    """A ranker's shape: an id embedding, a BatchNorm over raw dense features, an MLP, a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.BatchNorm1d(3)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, idx: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(torch.cat([self.ids(idx), self.norm(dense)], 1))).squeeze(-1)


def test_float16_export_keeps_parity_where_it_holds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Scorer().eval()
    rng = np.random.default_rng(0)
    mean = np.array([1000.2, 999.9, 1000.1], np.float32)
    with torch.no_grad():  # features around 1,000 with a spread of 0.1: float16's steps there are 0.5
        model.norm.running_mean.copy_(torch.from_numpy(mean))
        model.norm.running_var.fill_(0.01)
    inputs = {
        "idx": rng.integers(0, 10, 256).astype(np.int64),
        "dense": (mean + 0.1 * rng.normal(size=(256, 3))).astype(np.float32),
    }
    path = tmp_path / "m.fp16.onnx"
    diff = export_fp16(model, inputs, "p", path)
    assert 0 < diff <= FP16_TOLERANCE  # float16 inside (not exactly float32), float32 in and out
    session = ort.InferenceSession(str(path))
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(float)"]
    assert session.get_outputs()[0].type == "tensor(float)"
    assert not any(p.dtype != torch.float32 for p in model.parameters())  # the float32 model is left as it was
    # The BatchNorm kept in float32 is what holds parity: the whole model in float16 rounds the raw features.
    naive = copy.deepcopy(model).half()
    with torch.no_grad():
        rounded = naive(torch.from_numpy(inputs["idx"]), torch.from_numpy(inputs["dense"]).half()).float().numpy()
        expected = model(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    assert np.abs(rounded - expected).max() > FP16_TOLERANCE
    assert HalfPrecision(model).module.norm.weight.dtype == torch.float32
    torch.testing.assert_close(HalfPrecision(model).module.norm.running_mean, model.norm.running_mean, rtol=0, atol=0)
    assert HalfPrecision(model).module.mlp[0].weight.dtype == torch.float16
    # Where parity does not hold, nothing is written.
    with pytest.raises(ParityError, match=r"m\.fp16\.onnx: ONNX Runtime differs"):
        export_fp16(model, inputs, "p", path, tolerance=1e-7)
    assert not path.exists()


def test_index_exact_and_approximate() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exact, info = build_index(emb, IndexConfig(exact_max_items=5000))
    assert info["type"] == "IndexFlatIP"
    hnsw, info = build_index(emb, IndexConfig(kind="hnsw", hnsw_m=16, hnsw_ef_search=64))
    assert info["type"] == "IndexHNSWFlat"
    assert info["params"]["ef_search"] == 64
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    assert recall_vs_exact(exact, emb, queries, 20) == 1.0
    approx = recall_vs_exact(hnsw, emb, queries, 20)
    assert 0.8 < approx <= 1.0


def test_ivf_index_takes_the_smallest_nprobe_reaching_the_recall_target() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    config = IndexConfig(exact_max_items=1000, recall_at=50, recall_target=0.9)
    ivf, info = build_index(emb, config, queries)
    assert info["type"] == "IndexIVFFlat"
    assert info["params"]["nlist"] == 256  # about 4 sqrt(4000), a power of two
    nprobe = info["params"]["nprobe"]
    assert 1 < nprobe < 256
    assert recall_vs_exact(ivf, emb, queries, 50) >= 0.9
    ivf.nprobe = nprobe // 2
    assert recall_vs_exact(ivf, emb, queries, 50) < 0.9
    # The service opens it with the recorded nprobe.
    from service.recommend.retrieval import set_search_parameters

    set_search_parameters(faiss.ParameterSpace(), ivf, info["params"])
    assert ivf.nprobe == nprobe


def test_ranking_metrics_exact() -> None:
    recs = np.full((2, 100), -1, dtype=np.int64)
    recs[0, :3] = [1, 2, 3]
    recs[1, :3] = [4, 5, 6]
    recs[1, 30] = 9
    m = per_user_metrics(recs, [np.array([2, 10]), np.array([9])])
    assert m["recall@10"].tolist() == [0.5, 0.0]
    assert m["recall@50"].tolist() == [0.5, 1.0]
    assert m["hit_rate@10"].tolist() == [1.0, 0.0]
    ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx([ndcg_user0, 0.0])
    assert coverage(recs, n_items=20) == pytest.approx(6 / 20)  # items 1-6 in the top 10s
    lo, hi = bootstrap_interval(np.array([0.0, 1.0] * 50))
    assert lo < 0.5 < hi
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_cli_trains_on_ml100k_beats_most_popular_and_is_served(tmp_path: Path) -> None:
    """The quality floor in CI: the default preset on real data, evaluated through the exported bundle on the
    temporal hold-out, must beat most-popular; then the service serves that bundle."""
    out = subprocess.run(
        [
            sys.executable, "-m", "model_export", "--dataset", "movielens", "--data-dir", str(ML100K),
            "--out", str(tmp_path), "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recall@10" in out.stdout
    assert "ndcg@10" in out.stdout
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    assert {"most_popular", "retrieval", "pipeline"} <= lines.keys()
    bundle = load_bundle(tmp_path / "current")
    assert bundle.manifest.dataset["name"] == "ml-100k"
    assert bundle.manifest.dims.n_users == 943
    metrics = bundle.manifest.metrics["validation"]
    for metric in ("ndcg@10", "recall@10", "recall@100"):
        assert metrics["pipeline"][metric] > metrics["most_popular"][metric], metric
        assert metrics["retrieval"][metric] > metrics["most_popular"][metric], metric
    with TestClient(create_app(Settings(bundle_path=tmp_path / "current", warmup_requests=1, dev_mode=True))) as c:
        r = c.post("/v1/recommendations", json={"user_id": "1", "k": 10})
        assert r.status_code == 200
        titles = [it["title"] for it in r.json()["items"]]
        assert len(set(titles)) == 10
        seen = {bundle.item_titles[i] for i in bundle.seen(bundle.user_index["1"])}
        assert len(bundle.negatives(bundle.user_index["1"])) > 0  # user 1 rated some films below 4
        assert not seen & set(titles)


def test_cli_reports_data_errors(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "model_export", "--dataset", "movielens", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 2
    assert "no MovieLens files found" in out.stderr


def test_batched_evaluation_gives_each_user_what_one_request_gives(tiny_bundle: Path) -> None:
    """The exporter's evaluation asks the pipeline in batches (recommend_all): each user's list is the one a lone
    request gets, known users with their embedding and new users encoded from their events in the batch."""
    from model_export.evaluate import recommend_all
    from service.recommend.pipeline import Query

    pipeline = Pipeline.open(load_bundle(tiny_bundle), device="cpu")
    users = np.arange(40)
    embeddings = pipeline.encode(users)
    queries = [Query(int(u), embeddings[u], 10, 50) for u in users]
    events = [pipeline.bundle.history(int(u))[:5] for u in users[:20]]
    queries += [Query(-1, None, 10, 50, history=e) for e in events]
    batched = recommend_all(pipeline, queries)
    for q, got in zip(queries, batched, strict=True):
        alone = pipeline.recommend(q.user, q.embedding, q.k, q.num_candidates, history=q.history)
        np.testing.assert_array_equal(got.items, alone.items)


def test_the_default_serves_the_ordering_best_on_validation(tmp_path: Path) -> None:
    """By default (serve_best_ordering) the bundle serves whichever ordering scored best on its validation split: on
    the tiny synthetic log, popularity (the tiny preset itself serves the ranker, for the service tests)."""
    config = replace(
        preset("tiny"), serve_best_ordering=True, serve_int8=True, num_candidates=150, depth_grid=(100, 120)
    )
    built = build_bundle(generate_synthetic(config.synthetic, seed=config.seed), config, tmp_path, progress=False)
    manifest = json.loads((built.path / MANIFEST).read_text())
    # The depth: 100, then 120, tried below the 150 ANN candidates; the first that held validation is served.
    depth = manifest["candidates"]["depth"]
    assert depth in (100, 120, 150)
    assert manifest["metrics"]["depth"]["chosen"] == depth
    assert {"depth=100", "depth=120", "depth=150"} <= set(manifest["metrics"]["validation"])
    assert "ndcg@10" in manifest["metrics"]["validation"]["depth=100"]
    # With serve_int8 (the default preset's), validation tried int8 at the depth served and recorded its choice.
    int8 = manifest["metrics"]["int8"]
    assert manifest["onnx_int8_served"] == int8["chosen"]
    tried = {
        k.removeprefix("int8="): v["ndcg@10"]
        for k, v in manifest["metrics"]["validation"].items()
        if k.startswith("int8=")
    }
    assert tried
    at_fp32 = manifest["metrics"]["validation"][f"depth={manifest['candidates']['depth']}"]["ndcg@10"]
    if int8["chosen"]:
        assert tried["+".join(int8["chosen"])] >= (1 - config.int8_tolerance) * at_fp32
    else:
        assert all(v < (1 - config.int8_tolerance) * at_fp32 for v in tried.values())
    ranking = manifest["metrics"]["ranking"]
    assert manifest["candidates"]["ranking"] == ranking["chosen"] == ranking["best_on_validation"] != "ranker"
    validation = manifest["metrics"]["validation"]
    by_ranking = {k.removeprefix("ranking="): v["ndcg@10"] for k, v in validation.items() if k.startswith("ranking=")}
    assert by_ranking[ranking["chosen"]] > by_ranking["ranker"]
    assert load_bundle(built.path).manifest.candidates.ranking == ranking["chosen"]


def unseen_heldout(bundle: Bundle, seed: int) -> Interactions:
    """A held-out set for a bundle fitted on all its data: three items each user has not seen, at random."""
    rng = np.random.default_rng(seed)
    n_users, n_items = bundle.manifest.dims.n_users, bundle.manifest.dims.n_items
    rows = [
        (u, i) for u in range(n_users) for i in rng.permutation(np.setdiff1d(np.arange(n_items), bundle.seen(u)))[:3]
    ]
    user, item = np.array(rows, dtype=np.int64).T
    return Interactions(user, item, np.ones(len(rows), np.float32), np.zeros(len(rows), np.int64))


def test_the_depth_served_is_the_fewest_candidates_that_hold_validation(tiny_bundle: Path) -> None:
    """choose_depth: a depth below the full one is served only where validation NDCG@10 holds within the
    tolerance; the ANN's recall grows with depth; with no tolerance a shallower depth must score at least as well."""
    bundle = load_bundle(tiny_bundle)
    heldout = unseen_heldout(bundle, seed=0)
    pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0)
    users, rel = users_with_relevant(heldout, bundle.manifest.dims.n_users)
    full = 180
    _, lists = pipeline_recommendations(pipeline, users, 100, full, progress=False)
    at_full = mean_metrics(lists, rel, bundle.manifest.dims.n_items)
    grid = (50, 100, 140)  # 50 is below the lists' depth (100): never tried
    loose, by_depth = choose_depth(bundle, heldout, "ranker", full, grid, 1.0, at_full)
    assert loose == 100
    assert set(by_depth) == {100, 140, 180}
    recall = [by_depth[d]["candidate_recall"] for d in (100, 140, 180)]
    assert recall == sorted(recall)
    assert recall[0] < recall[-1]
    assert "ndcg@10" not in by_depth[140]  # scored shallowest first, up to the depth chosen
    strict, by_depth = choose_depth(bundle, heldout, "ranker", full, grid, 0.0, at_full)
    assert by_depth[strict]["ndcg@10"] >= at_full["ndcg@10"]
    assert all(by_depth[d]["ndcg@10"] < at_full["ndcg@10"] for d in (100, 140) if d < strict)


def test_int8_is_served_only_where_it_holds_validation(tiny_bundle: Path) -> None:
    """choose_int8 tries both models in int8, then the ranker alone, then the user tower alone, and keeps the first
    within the tolerance of float32's NDCG@10; none when none is. An ordering that never calls the ranker tries
    the user tower alone."""
    bundle = load_bundle(tiny_bundle)
    n_users, n_items = bundle.manifest.dims.n_users, bundle.manifest.dims.n_items
    heldout = unseen_heldout(bundle, seed=1)
    users, rel = users_with_relevant(heldout, n_users)
    _, lists = pipeline_recommendations(Pipeline.open(bundle, device="cpu", precision="fp32"), users, 100, 100, False)
    at_fp32 = mean_metrics(lists, rel, n_items)
    models, tried = choose_int8(bundle, heldout, "ranker", 100, 1.0, at_fp32)
    assert models == ("user_tower", "ranker")
    assert list(tried) == ["user_tower+ranker"]
    assert tried["user_tower+ranker"]["ndcg@10"] != at_fp32["ndcg@10"]  # int8 weights: other answers
    models, tried = choose_int8(bundle, heldout, "ranker", 100, -1.0, at_fp32)  # nothing can reach twice float32's
    assert models == ()
    assert list(tried) == ["user_tower+ranker", "ranker", "user_tower"]
    models, tried = choose_int8(bundle, heldout, "item_item", 100, 1.0, at_fp32)
    assert models == ("user_tower",)
    assert list(tried) == ["user_tower"]


def test_a_build_reuses_an_earlier_builds_model_selection(tmp_path: Path) -> None:
    """A retrain's bundle reuses its gate's build (the same recipe on the events before a cut): the two-tower model
    is trained once (no model selection of its own), the ranker learns on the events the reused towers never saw
    (each user's held-out part of the gate's split, and everything after the cut), and the choices served are the
    reused validation's; the bundle knows every user and is served."""
    config = preset("tiny")
    raw = generate_synthetic(config.synthetic, seed=config.seed)
    x = raw.interactions
    cut = int(np.quantile(x.timestamp, 0.85))
    before = replace(raw, interactions=x.take(np.flatnonzero(x.timestamp < cut)))
    gate = build_bundle(before, config, tmp_path / "gate", progress=False, make_current=False)
    assert gate.fitted is not None
    assert gate.fitted.seen_until.max() < cut
    final = build_bundle(raw, config, tmp_path / "final", progress=False, reuse=gate.fitted)
    manifest = json.loads((final.path / MANIFEST).read_text())
    training = manifest["training"]
    assert "two_tower_selection" not in training["stage_seconds"]
    assert "reused" in training["model_selection"]
    data = manifest["dataset"]
    assert data["split"].startswith("the events the reused model selection's towers never saw")
    # The ranker's examples: positives its towers never saw, more than the gate's own (it adds those after the cut).
    assert data["n_heldout"] > json.loads((gate.path / MANIFEST).read_text())["dataset"]["n_heldout"]
    assert data["served_positives"] > json.loads((gate.path / MANIFEST).read_text())["dataset"]["served_positives"]
    assert manifest["candidates"]["ranking"] == gate.fitted.validation.ranking  # type: ignore[union-attr]
    assert final.metrics == gate.metrics  # the reused validation's figures, not new ones
    bundle = load_bundle(final.path)
    assert bundle.manifest.dims.n_users == len(raw.user_ids)
    settings = Settings(bundle_path=final.path, redis_url=None, warmup_requests=1, dev_mode=True)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/recommendations", json={"user_id": raw.user_ids[0], "k": 5})
        assert answer.status_code == 200
        assert answer.json()["bundle_version"] == final.version
