"""Where to put an item the models never trained on: the item tower's content embedding, or the mean of its
content neighbours' trained embeddings (service.items.content.mapped_embeddings)? Chosen on validation only.

    python -m benchmarks.cold_placement --data-dir ../shared/data/ml-100k [--validation]

As benchmarks.item_quality: per user by time, earliest 80 % train (with `--validation`, the earliest 80 % of
that 80 %, so the API benchmark's test part is never read); 10 % of the items (seeded) out of training
entirely; a bundle built on the rest. Each cold item is then embedded both ways and added to the pipeline as
`PUT /v1/items` adds it; for every user with a held-out positive on a cold item: Recall@50 of those positives
by retrieval alone and by the full pipeline, and the cold items' share of the pipeline's top 50.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.api_quality import make_split, write_copy
from benchmarks.item_quality import cold_items, item_record
from model_export.build import build_bundle
from model_export.config import preset
from model_export.data import Dataset, Interactions, load_movielens, temporal_split
from service.core.bundle import Bundle, load_bundle
from service.items.content import mapped_embeddings, nearest_by_content
from service.items.item_encoder import ItemEncoder
from service.recommend.features import item_dense_row, item_text
from service.recommend.pipeline import Pipeline

K = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--validation", action="store_true", help="on the API benchmark's training part only")
    parser.add_argument("--neighbours", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=0.1)
    args = parser.parse_args()
    dataset = load_movielens(args.data_dir)
    if args.validation:
        dataset = replace(dataset, interactions=temporal_split(dataset.interactions, 0.2)[0])
    split = make_split(dataset)
    cold, is_cold, train, test = cold_items(dataset, split, 0.1, np.random.default_rng(0))
    test = test.take(np.flatnonzero(is_cold[test.item]))
    work = Path(tempfile.mkdtemp(prefix="cold-placement-"))
    try:
        write_copy(dataset, train, args.data_dir, "same", work / "data", drop_items=cold)
        built = build_bundle(load_movielens(work / "data"), preset("default"), work / "b", progress=False)
        compare(load_bundle(built.path), dataset, cold, test, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(bundle: Bundle, dataset: Dataset, cold: np.ndarray, test: Interactions, args: argparse.Namespace) -> None:
    encoder = ItemEncoder(bundle, ["CPUExecutionProvider"], 0)
    records = [item_record(dataset, i) for i in cold]
    names = bundle.manifest.feature_spec.item_dense
    dense = np.stack([item_dense_row(names, r["genres"], r.get("year")) for r in records])
    texts = [item_text(r["title"], r["genres"]) for r in records]
    content = encoder.content(dense, texts)
    assert bundle.item_content is not None
    neighbours, cosines = nearest_by_content(content, bundle.item_content, args.neighbours)
    ways = {
        "item tower": encoder.tower(dense, texts),
        "content neighbours": mapped_embeddings(neighbours, cosines, bundle.item_embeddings, args.temperature),
    }
    n_trained = bundle.manifest.dims.n_items
    column = {int(c): n_trained + j for j, c in enumerate(cold)}
    for name, embeddings in ways.items():
        pipeline = Pipeline.open(bundle, device="cpu", intra_op_threads=0)
        pipeline.add_items(
            [f"cold-{dataset.item_ids[i]}" for i in cold], [r["title"] for r in records], dense, embeddings
        )
        retrieved, ranked, share = [], [], []
        for u in np.unique(test.user):
            user = bundle.user_index.get(dataset.user_ids[u], -1)
            relevant = np.array([column[int(i)] for i in test.item[test.user == u]])
            embedding = pipeline.encode(np.array([user]))[0]
            seen = bundle.seen(user)
            _, top = pipeline.retriever.search(embedding[None], K + len(seen))
            retrieved.append(np.isin(relevant, top[0][~np.isin(top[0], seen)][:K]).mean())
            items = pipeline.recommend(user, embedding, K, 500).items
            ranked.append(np.isin(relevant, items).mean())
            share.append((items >= n_trained).mean())
        print(
            f"{name}: {len(ranked)} users, retrieval Recall@{K} {np.mean(retrieved):.4f}, pipeline Recall@{K} "
            f"{np.mean(ranked):.4f}, cold share of the top {K} {np.mean(share):.1%}"
        )


if __name__ == "__main__":
    main()
