"""The reference `benchmarks.serve` measures the service against: what a team would write in an afternoon instead.

One FastAPI app, one synchronous route (FastAPI runs it in its thread pool), no cache, no batching:

    POST /v1/recommendations {"user_id": "42", "k": 10}
    -> the user's embedding (the bundle's user tower run once per user at start-up, a table lookup per request)
    -> 500 candidates from a FAISS HNSW index (M 32, efSearch 512) over the bundle's item embeddings
    -> the items the user has seen removed
    -> a 3-layer MLP (user embedding, item embedding -> 256 -> 128 -> 1) in ONNX Runtime scores them
    -> the top k.

It reads the same bundle as the service (PLAIN_BUNDLE=path), so both serve the same catalogue, users and
embeddings. Its MLP's weights are random (seeded): a ranker's cost does not depend on what it learnt. Started by
`benchmarks.serve` as `uvicorn --factory benchmarks.plain_app:create_app [--workers N]`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, Field

from service.core.bundle import load_bundle
from service.recommend.pipeline import Pipeline

CANDIDATES = 500
EF_SEARCH = 512
HIDDEN = (256, 128)


class Ask(BaseModel):
    user_id: str = Field(min_length=1, max_length=128)
    k: int = Field(10, ge=1, le=100)


def mlp_model(dim: int, seed: int = 0) -> bytes:
    """A 3-layer MLP over [user, item] (2 * dim) -> HIDDEN -> 1, ReLU between, as an ONNX model: inputs
    `user` (1, dim) and `items` (N, dim), output `score` (N, 1)."""
    rng = np.random.default_rng(seed)
    sizes = [2 * dim, *HIDDEN, 1]
    inits, nodes = [], []
    user = helper.make_tensor_value_info("user", TensorProto.FLOAT, [1, dim])
    items = helper.make_tensor_value_info("items", TensorProto.FLOAT, ["n", dim])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])
    nodes.append(helper.make_node("Shape", ["items"], ["items_shape"], start=0, end=1))
    nodes.append(helper.make_node("Concat", ["items_shape", "dim"], ["tile_to"], axis=0))
    inits.append(numpy_helper.from_array(np.array([dim], dtype=np.int64), "dim"))
    nodes.append(helper.make_node("Expand", ["user", "tile_to"], ["users"]))
    nodes.append(helper.make_node("Concat", ["users", "items"], ["h0"], axis=1))
    for n, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{n}"), numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{n}")]
        out = "score" if n == len(sizes) - 2 else f"z{n}"
        nodes.append(helper.make_node("Gemm", [f"h{n}", f"w{n}", f"b{n}"], [out]))
        if out != "score":
            nodes.append(helper.make_node("Relu", [out], [f"h{n + 1}"]))
    graph = helper.make_graph(nodes, "plain_mlp", [user, items], [score], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


class PlainRecommender:
    def __init__(self, bundle_path: Path) -> None:
        bundle = load_bundle(bundle_path)
        pipeline = Pipeline.open(bundle)
        n_users = bundle.manifest.dims.n_users
        self.user_index = bundle.user_index
        self.item_ids = bundle.item_ids
        self.user_embeddings = np.concatenate(
            [pipeline.encode(np.arange(s, min(s + 1024, n_users))) for s in range(0, n_users, 1024)]
        ).astype(np.float32)
        self.seen = [bundle.seen(u) for u in range(n_users)]
        self.item_embeddings = np.ascontiguousarray(bundle.item_embeddings, dtype=np.float32)
        dim = self.item_embeddings.shape[1]
        self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        self.index.add(self.item_embeddings)
        self.index.hnsw.efSearch = EF_SEARCH
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.ranker = ort.InferenceSession(mlp_model(dim), options, providers=["CPUExecutionProvider"])

    def recommend(self, user_id: str, k: int) -> list[str]:
        user = self.user_index.get(user_id)
        if user is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        query = self.user_embeddings[user : user + 1]
        _, found = self.index.search(query, CANDIDATES)
        candidates = found[0][found[0] >= 0]
        candidates = candidates[~np.isin(candidates, self.seen[user])]
        scores = self.ranker.run(None, {"user": query, "items": self.item_embeddings[candidates]})[0][:, 0]
        top = candidates[np.argsort(-scores)[:k]]
        return [self.item_ids[i] for i in top]


def create_app() -> FastAPI:
    faiss.omp_set_num_threads(1)
    recommender = PlainRecommender(Path(os.environ["PLAIN_BUNDLE"]))
    app = FastAPI(title="plain reference app")

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/recommendations")
    def recommendations(ask: Ask) -> dict[str, object]:
        return {"user_id": ask.user_id, "items": [{"item_id": i} for i in recommender.recommend(ask.user_id, ask.k)]}

    return app
