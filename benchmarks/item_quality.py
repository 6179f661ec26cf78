"""Items as a user of the service meets them: similar items, items added live, cold items, over HTTP.

    python -m benchmarks.item_quality --data-dir ../shared/data/ml-100k [--layout same|csv] [--cold-share 0.1]
    python -m benchmarks.item_quality --synthetic --preset tiny     # the small version CI runs (tests/)

Protocol: every user's interactions (all ratings) are split by time as in benchmarks.api_quality (earliest 80 %
train, latest 20 % held out; positives: rating >= 4). A random `--cold-share` of the items (seeded) is taken out
of the training copy entirely (ratings and item file): the bundle never knows them. The copy is written as a
MovieLens download, the bundle built by `python -m model_export` (its defaults) and served by `python -m service`.

- Similar items (next-item prediction): for each warm item a, the items users liked right after a, where that
  next positive is held out (`model_export.evaluate.next_items`). `GET /v1/items/{a}/similar?k=10` against
  ItemKNN (cosine of the items' user columns) and EASE (its item-item weights, lambda 100) neighbours fitted on
  the same training positives. Recall@10 and NDCG@10 per query item, averaged over the query items.
- Content twins: `--twins` warm items are PUT again under new ids with their own title, genres and year. For
  each twin: the original's rank among the twin's similar items, and the share of its 10 similar items
  released the same year, against chance (the share of the catalogue released that year) and against the
  original's own similar items.
- Cold items: every cold item is PUT live (title, genres, year). Each test user with a held-out positive on a
  cold item asks `POST /v1/recommendations` with k=50; Recall@50 of those cold positives, against random
  (every unseen item equally likely: 50 / unseen per relevant item) and most popular (cold items have no
  popularity: never in its top 50).

Writes <out>/item_quality[-<name>].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.api_quality import Split, build_with_cli, make_split, post, summarise, write_copy
from benchmarks.serve import Server
from model_export.baselines import ItemKNN, ease_weights, interaction_matrix
from model_export.config import preset
from model_export.data import (
    Dataset,
    Interactions,
    generate_synthetic,
    load_movielens,
    positives,
    temporal_split,
    unseen,
)
from model_export.evaluate import next_items
from service.recommend.features import year_of

K = 10
COLD_K = 50
MIN_RATING = 4.0
EASE_LAMBDA = 100.0  # benchmarks.api_quality's validation choice on ml-100k
log = logging.getLogger("item_quality")


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        answer: dict[str, Any] = json.loads(r.read())
    return answer


def put(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="PUT"
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        answer: dict[str, Any] = json.loads(r.read())
    return answer


def item_record(dataset: Dataset, item: int) -> dict[str, Any]:
    """What a client would PUT for `item`: its title, genres and release year (no description: the data has none)."""
    names = dataset.item_dense_names
    genres = [
        n.removeprefix("genre:") for j, n in enumerate(names) if n.startswith("genre:") and dataset.item_dense[item, j]
    ]
    body: dict[str, Any] = {"title": dataset.item_titles[item], "genres": genres}
    year = release_years(dataset)[item]
    if year:
        body["year"] = int(year)
    return body


def release_years(dataset: Dataset) -> np.ndarray:
    """(I,) int: each item's release year from its dense feature (0: unknown)."""
    return year_of(dataset.item_dense, dataset.item_dense_names)


def similar_ids(server: Server, item_id: str, k: int) -> list[str]:
    query = urllib.parse.urlencode({"k": k})
    answer = get(f"{server.url}/v1/items/{urllib.parse.quote(item_id, safe='')}/similar?{query}")
    return [it["item_id"] for it in answer["items"]]


def neighbour_lists(similarity: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query item's top k by `similarity` (I, I) rows, itself left out. (Q, k)"""
    rows = similarity[queries].astype(np.float64)
    rows[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-rows, axis=1, kind="stable")[:, :k]


def cold_items(
    dataset: Dataset, split: Split, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Interactions, Interactions]:
    """A random `share` of the items, taken out of training entirely. Returns (cold item indices, (I,) mask,
    the training part without them, every held-out positive of an item the user had not rated in training)."""
    cold = np.sort(rng.choice(dataset.n_items, size=round(share * dataset.n_items), replace=False))
    is_cold = np.isin(np.arange(dataset.n_items), cold)
    train = split.train.take(np.flatnonzero(~is_cold[split.train.item]))
    heldout = temporal_split(dataset.interactions, 0.2)[1]  # make_split's held-out part
    test = unseen(positives(heldout, dataset.n_items, MIN_RATING), split.train, dataset.n_items)
    return cold, is_cold, train, test


def run(
    dataset: Dataset,
    work: Path,
    *,
    source: Path | None = None,
    layout: str = "csv",
    preset_name: str = "default",
    cold_share: float = 0.1,
    twins: int = 60,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole measurement in `work` (a scratch directory). Returns the report (JSON-serialisable)."""
    rng = np.random.default_rng(seed)
    split = make_split(dataset)
    cold, is_cold, train, test_all = cold_items(dataset, split, cold_share, rng)
    copy, bundles = work / "data", work / "bundles"
    write_copy(dataset, train, source, layout, copy, drop_items=cold)
    manifest, train_seconds = build_with_cli(copy, bundles, preset_name, seed)

    # Next-item pairs among warm items: an earlier positive, then a held-out one.
    earlier = positives(train, dataset.n_items, MIN_RATING)
    later = test_all.take(np.flatnonzero(~is_cold[test_all.item]))
    queries, relevant = next_items(earlier, later, dataset.n_items)
    x = interaction_matrix(earlier, dataset.n_users, dataset.n_items)
    knn = ItemKNN(neighbours=dataset.n_items)  # every neighbour: its cosine rows as they are
    knn.fit(x, seed)
    cosine = knn.sim
    cosine[:, is_cold] = -np.inf  # the baselines know no cold item either
    ease = ease_weights(x, EASE_LAMBDA)
    ease[:, is_cold] = -np.inf
    lists: dict[str, np.ndarray] = {
        "itemknn": neighbour_lists(cosine, queries, K),
        "ease": neighbour_lists(ease, queries, K),
    }
    years = release_years(dataset)
    index = {v: i for i, v in enumerate(dataset.item_ids)}
    env = {"RECO_DEV_MODE": "true", "RECO_ACCESS_LOG": "false", "RECO_LOG_LEVEL": "warning"}
    server = Server(bundles / "current", env)
    try:
        t0 = time.perf_counter()
        service = np.full((len(queries), K), -1, dtype=np.int64)
        for row, q in enumerate(queries):
            ids = similar_ids(server, dataset.item_ids[q], K)
            service[row, : len(ids)] = [index.get(i, -2) for i in ids]
        similar_seconds = time.perf_counter() - t0
        lists = {"service": service, **lists}

        # Content twins of warm items; the originals' own lists for reference.
        warm = np.flatnonzero(~is_cold & (years > 0) if years.any() else ~is_cold)
        originals = np.sort(rng.choice(warm, size=min(twins, len(warm)), replace=False))
        twin_rows = []
        for item in originals:
            twin_id = f"twin-{dataset.item_ids[item]}"
            put(f"{server.url}/v1/items/{urllib.parse.quote(twin_id, safe='')}", item_record(dataset, item))
            twin_list = [index.get(i, -2) for i in similar_ids(server, twin_id, 50)]  # -2: another twin
            own_list = [index.get(i, -2) for i in similar_ids(server, dataset.item_ids[item], K)]
            rank = twin_list.index(int(item)) if int(item) in twin_list else None
            twin_rows.append((int(item), rank, twin_list[:K], own_list))

        # Cold items, live.
        t0 = time.perf_counter()
        for item in cold:
            put(
                f"{server.url}/v1/items/{urllib.parse.quote(dataset.item_ids[item], safe='')}",
                item_record(dataset, item),
            )
        put_seconds = time.perf_counter() - t0
        cold_relevant = {
            int(u): items for u, items in _per_user(test_all.take(np.flatnonzero(is_cold[test_all.item]))).items()
        }
        seen_counts = np.bincount(split.train.user, minlength=dataset.n_users)  # every rating is seen
        cold_recall, random_recall, cold_share_top = [], [], []
        for u, rel in cold_relevant.items():
            answer = post(f"{server.url}/v1/recommendations", {"user_id": dataset.user_ids[u], "k": COLD_K})
            got = np.array([index.get(it["item_id"], -2) for it in answer["items"]], dtype=np.int64)
            cold_recall.append(np.isin(rel, got).mean())
            random_recall.append(min(1.0, COLD_K / (dataset.n_items - seen_counts[u])))
            cold_share_top.append(np.isin(got, cold).mean() if len(got) else 0.0)
    finally:
        server.stop()

    similar = summarise(lists, relevant, (f"recall@{K}", f"ndcg@{K}"))
    twin_ranks = [r for _, r, _, _ in twin_rows]
    same_year = [np.mean(years[np.array(t)[np.array(t) >= 0]] == years[o]) for o, _, t, _ in twin_rows]
    own_same_year = [np.mean(years[own] == years[o]) for o, _, _, own in twin_rows]
    chance = [np.mean(np.delete(years, o) == years[o]) for o, _, _, _ in twin_rows]
    recall_cold = float(np.mean(cold_recall)) if cold_recall else 0.0
    recall_random = float(np.mean(random_recall)) if random_recall else 0.0
    return {
        "meta": {
            "dataset": dataset.name,
            "layout": layout,
            "preset": preset_name,
            "seed": seed,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "split": "per user by time over all ratings: earliest 80 % train, latest 20 % held out; cold items "
            "taken out of training entirely",
            "bundle": manifest["bundle_version"],
            "similar_items": {k: v for k, v in manifest["similar_items"].items() if k != "validation"},
            "content": {k: v for k, v in (manifest.get("content") or {}).items() if k != "validation"},
            "cold_items": len(cold),
            "query_items": len(queries),
            "train_seconds": round(train_seconds, 1),
            "similar_request_seconds": round(similar_seconds, 1),
            "cold_put_seconds": round(put_seconds, 1),
        },
        "similar_items": similar,
        "twins": {
            "twins": len(twin_rows),
            "original_nearest": float(np.mean([r == 0 for r in twin_ranks])),
            "original_in_top_10": float(np.mean([r is not None and r < K for r in twin_ranks])),
            "same_year_share": float(np.mean(same_year)),
            "same_year_share_of_the_originals_own_lists": float(np.mean(own_same_year)),
            "same_year_chance": float(np.mean(chance)),
        },
        "cold_items": {
            "users": len(cold_recall),
            f"service_recall@{COLD_K}": recall_cold,
            f"random_recall@{COLD_K}": recall_random,
            f"most_popular_recall@{COLD_K}": 0.0,
            "service_over_random": recall_cold / recall_random if recall_random else None,
            f"cold_share_of_top_{COLD_K}": float(np.mean(cold_share_top)) if cold_share_top else 0.0,
            "cold_share_of_catalogue": len(cold) / dataset.n_items,
        },
        "checks": {
            "service_over_itemknn_recall@10": similar["service"][f"recall@{K}"]["mean"]
            / max(similar["itemknn"][f"recall@{K}"]["mean"], 1e-12),
            "service_over_itemknn_ndcg@10": similar["service"][f"ndcg@{K}"]["mean"]
            / max(similar["itemknn"][f"ndcg@{K}"]["mean"], 1e-12),
        },
    }


def _per_user(interactions: Interactions) -> dict[int, np.ndarray]:
    order = np.argsort(interactions.user, kind="stable")
    users, items = interactions.user[order], interactions.item[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return {int(users[s]): items[s:e] for s, e in zip(starts, np.r_[starts[1:], len(users)], strict=True)}


def markdown(report: dict[str, Any]) -> str:
    meta, twins, cold = report["meta"], report["twins"], report["cold_items"]
    lines = [
        f"# Items through the API: {meta['dataset']} ({meta['layout']} layout), {meta['date']}",
        "",
        f"Bundle {meta['bundle']} (preset {meta['preset']}, seed {meta['seed']}); {meta['split']}; "
        f"{meta['cold_items']} cold items; similar items: {meta['similar_items']}; content: {meta['content']}.",
        "",
        f"**Similar items, next-item prediction** ({meta['query_items']} query items, k={K}):",
        "",
        f"| model | Recall@{K} | NDCG@{K} |",
        "| --- | --- | --- |",
    ]
    for name, m in report["similar_items"].items():
        cells = [
            f"{m[x]['mean']:.4f} [{m[x]['ci95'][0]:.3f}, {m[x]['ci95'][1]:.3f}]" for x in (f"recall@{K}", f"ndcg@{K}")
        ]
        lines.append(f"| {'**service**' if name == 'service' else name} | {' | '.join(cells)} |")
    checks = report["checks"]
    lines += [
        "",
        f"Service / ItemKNN: Recall@{K} {checks['service_over_itemknn_recall@10']:.3f} x, "
        f"NDCG@{K} {checks['service_over_itemknn_ndcg@10']:.3f} x.",
        "",
        f"**Content twins** ({twins['twins']} trained items PUT again under new ids, their title, genres, year): "
        f"the original is the twin's nearest item for {twins['original_nearest']:.0%} and in its top 10 for "
        f"{twins['original_in_top_10']:.0%}; {twins['same_year_share']:.0%} of the twins' 10 similar items share "
        f"their year (chance {twins['same_year_chance']:.0%}; the originals' own similar items: "
        f"{twins['same_year_share_of_the_originals_own_lists']:.0%}).",
        "",
        f"**Cold items** ({meta['cold_items']} items never trained, PUT live; {cold['users']} users with a held-out "
        f"positive on one): Recall@{COLD_K} {cold[f'service_recall@{COLD_K}']:.4f} against random "
        f"{cold[f'random_recall@{COLD_K}']:.4f} (**{cold['service_over_random']:.2f} x**) and most popular 0; cold "
        f"items are {cold[f'cold_share_of_top_{COLD_K}']:.0%} of the top {COLD_K} "
        f"({cold['cold_share_of_catalogue']:.0%} of the catalogue).",
        "",
        f"Command: `python -m benchmarks.item_quality` (train {meta['train_seconds']} s; "
        f"{meta['machine']['platform']}, Python {meta['machine']['python']}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path, help="a MovieLens download (read, never copied into the project)")
    source.add_argument("--synthetic", action="store_true", help="the generator's data at the preset's size")
    parser.add_argument("--layout", choices=("same", "csv"), default=None, help="default: same for ml-100k, else csv")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--twins", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="", help="suffix of the output files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.synthetic:
        dataset, layout = generate_synthetic(preset(args.preset).synthetic, args.seed), "csv"
    else:
        dataset = load_movielens(args.data_dir)
        layout = args.layout or ("same" if (args.data_dir / "u.data").is_file() else "csv")
    with tempfile.TemporaryDirectory(prefix="item-quality-") as work:
        report = run(
            dataset,
            Path(work),
            source=args.data_dir,
            layout=layout,
            preset_name=args.preset,
            cold_share=args.cold_share,
            twins=args.twins,
            seed=args.seed,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("item_quality" + (f"-{args.name}" if args.name else ""))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
