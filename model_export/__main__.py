"""CLI.

    python -m model_export --dataset synthetic|movielens [--data-dir PATH] --out bundles/ [--preset tiny]
    python -m model_export train --interactions F --items F [--users F] --out bundles/   (your data, docs/data.md)
    python -m model_export sample-data --out DIR [--format csv|parquet]   (a small dataset in the data contract)
    python -m model_export retrain --database URL --bundles DIR   (train, gate, publish: model_export/retrain.py)
    python -m model_export bundles --database URL                 (the bundle registry)
    python -m model_export publish VERSION --database URL [--bundles DIR] [--override-gate]
    python -m model_export rollback --database URL [--bundles DIR]

Under `torchrun --nproc-per-node N -m model_export ...` a build or retrain trains its two-tower models on N
processes (model_export/distributed.py); rank 0 does the rest and writes.
`--if-missing`: build only when OUT/current does not exist (the compose `export` job, the k8s init container).
Every command takes `--no-progress` (no progress bars) and `--json` (its result as one JSON line on stdout, for
scripts); without `--json` it prints its result as readable lines. Errors go to stderr, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from model_export.config import PRESETS, ExportConfig, preset
from model_export.contract import load_contract, write_contract
from model_export.data import DataError, Dataset, generate_synthetic, load_movielens


def output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command takes: how its result is printed."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line (for scripts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def report(args: argparse.Namespace, result: Any, readable: str) -> None:
    """A command's result: one JSON line with `--json`, else `readable`."""
    print(json.dumps(result, default=str) if args.json else readable, flush=True)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bundles"), help="directory that receives the bundle")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the two-tower epochs of the preset")
    parser.add_argument(
        "--history-sampling",
        choices=["sequential", "shuffled"],
        help="two-tower training histories: the events before each one (default; logs whose order matters) "
        "or other events of the user at random (data whose order does not predict what comes next)",
    )
    parser.add_argument(
        "--fit",
        choices=["all", "split"],
        default="all",
        help="all (default): select settings on the temporal hold-out, then refit on every interaction, so the "
        "bundle serves from all the data; split: the bundle is the model fitted without the hold-out "
        "(evaluation-only: the held-out interactions are unknown to it)",
    )
    parser.add_argument(
        "--serve-ranker",
        action="store_true",
        help="serve the ranker even where a candidate source alone scored better on validation (by default the "
        "bundle serves whichever of the two scored best)",
    )
    output_arguments(parser)
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when OUT/current already exists (a one-shot job that builds the demo bundle once)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sample-data":
        return sample_data(argv[1:])
    if argv and argv[0] == "train":
        return train_from_files(argv[1:])
    if argv and argv[0] == "import":
        return import_into_database(argv[1:])
    if argv and argv[0] in REGISTRY_COMMANDS:
        return REGISTRY_COMMANDS[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    parser.add_argument("--dataset", choices=["synthetic", "movielens"], default="synthetic")
    parser.add_argument("--data-dir", type=Path, help="MovieLens directory (ml-100k, ml-1m, ml-latest-small, ml-25m)")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    if args.dataset == "movielens" and args.data_dir is None:
        parser.error("--dataset movielens needs --data-dir")
    return build(
        args,
        lambda config: (
            load_movielens(args.data_dir)
            if args.dataset == "movielens"
            else generate_synthetic(config.synthetic, seed=config.seed)
        ),
    )


def train_from_files(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export train", description="Train a bundle on tables in the data contract (docs/data.md)."
    )
    parser.add_argument("--interactions", type=Path, help="CSV or Parquet: user_id, item_id, timestamp")
    parser.add_argument(
        "--items", type=Path, help="CSV or Parquet: item_id, title, categories ... (default: the ids the log names)"
    )
    parser.add_argument("--users", type=Path, help="CSV or Parquet: user_id and categorical columns (optional)")
    parser.add_argument(
        "--database",
        help="train on everything the service's database holds instead (imported data, every event since, deleted "
        "users left out): a SQLAlchemy URL, e.g. sqlite:///bundles/reco.sqlite3",
    )
    parser.add_argument("--name", help="the dataset's name in the bundle's version (default: contract, database)")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    if args.database is not None:
        if args.interactions or args.items or args.users:
            parser.error("--database trains on the database's contents: leave out --interactions, --items, --users")

        def from_database(config: ExportConfig) -> Dataset:
            from model_export.database import load_database

            return load_database(args.database, name=args.name or "database")

        return build(args, from_database)
    if args.interactions is None:
        parser.error("give --interactions (and --items, if you have an items table), or --database")
    name = args.name or "contract"
    return build(args, lambda config: load_contract(args.interactions, args.items, args.users, name=name))


def import_into_database(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export import",
        description="Load tables in the data contract (docs/data.md) into the service's database, once.",
    )
    parser.add_argument("--database", required=True, help="a SQLAlchemy URL (the service's RECO_DATABASE_URL)")
    parser.add_argument("--interactions", type=Path, required=True)
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--users", type=Path)
    output_arguments(parser)
    args = parser.parse_args(argv)
    from model_export.database import import_tables

    try:
        written = import_tables(args.database, args.interactions, args.items, args.users)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(args, written, "imported " + ", ".join(f"{n} {table}" for table, n in written.items()))
    return 0


def retrain_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export retrain",
        description="Train on everything the database holds, score the result and the published bundle on the most "
        "recent events held out by time, and publish it only if it is not worse (model_export/retrain.py).",
    )
    database_argument(parser)
    parser.add_argument("--bundles", type=Path, required=True, help="the bundles root every replica reads")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="rejected only when worse with confidence by more than this share of the published bundle's NDCG@10 "
        "or Recall@10 (model_export/gate.py)",
    )
    parser.add_argument("--holdout-fraction", type=float, default=0.1, help="latest share of events held out")
    parser.add_argument("--min-users", type=int, default=20, help="fewer users with held-out positives: skip")
    parser.add_argument(
        "--every", type=float, help="run again every this many seconds, for ever (compose's retrain service)"
    )
    output_arguments(parser)
    args = parser.parse_args(argv)
    if not args.database:
        parser.error("give --database or set RECO_DATABASE_URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return in_group(lambda: _retrain_loop(args))


def _retrain_loop(args: argparse.Namespace) -> int:
    from model_export.retrain import retrain

    while True:
        try:
            result = retrain(
                args.database,
                args.bundles,
                preset(args.preset, seed=args.seed),
                margin=args.margin,
                holdout_fraction=args.holdout_fraction,
                min_users=args.min_users,
                progress=not args.no_progress,
            )
        except Exception:
            if args.every is None:
                raise
            logging.getLogger("model_export.retrain").exception("retrain failed (recorded in the registry)")
        else:
            report(args, vars(result), retrain_line(result))
        if args.every is None:
            return 0
        time.sleep(args.every)


def retrain_line(result: Any) -> str:
    """One retrain run, readable: what happened, to which bundle, on what scores."""
    scores = ""
    if result.candidate is not None:
        published = result.published or {}
        scores = " ".join(
            f"{m} {v:.4f}" + (f" (published {published[m]:.4f})" if m in published else "")
            for m, v in result.candidate.items()
        )
    return f"retrain: {result.result} {result.version or '-'} in {result.seconds:.0f}s; {scores}; {result.message}"


def database_argument(parser: argparse.ArgumentParser) -> None:
    """--database, by default the service's own RECO_DATABASE_URL (a password then stays out of the arguments)."""
    parser.add_argument(
        "--database",
        default=os.environ.get("RECO_DATABASE_URL"),
        help="a SQLAlchemy URL (default: $RECO_DATABASE_URL, the service's)",
    )


def list_bundles(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_export bundles", description="The bundle registry.")
    database_argument(parser)
    output_arguments(parser)
    args = parser.parse_args(argv)
    from service.store import registry

    engine = registry_engine(parser, args)
    try:
        rows, runs = registry.entries(engine), registry.last_retrains(engine, 5)
    finally:
        engine.dispose()
    lines = [f"{'version':<48} {'status':<12} {'gate':<11} {'ndcg@10':>8} {'published':>10}  created"]
    for r in rows:
        cand, pub = r.metrics.get("candidate") or {}, r.metrics.get("published") or {}
        score = f"{cand.get('ndcg@10', float('nan')):.4f}"
        against = f"{pub['ndcg@10']:.4f}" if pub else "-"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))
        lines.append(f"{r.version:<48} {r.status:<12} {r.gate:<11} {score:>8} {against:>10}  {created}")
    for run in runs:
        finished = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.finished_at))
        took = run.finished_at - run.started_at
        lines.append(f"retrain {finished}: {run.result} {run.version or ''} ({took:.0f}s) {run.message}")
    report(args, {"bundles": [asdict(r) for r in rows], "retrains": [asdict(r) for r in runs]}, "\n".join(lines))
    return 0


def registry_engine(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """An engine on `--database`, its schema brought to the latest migration (the registry's tables)."""
    if not args.database:
        parser.error("give --database or set RECO_DATABASE_URL")
    from service.store.schema import migrate, open_engine

    migrate(args.database)
    return open_engine(args.database, 30.0)


def publish_command(argv: list[str], rollback: bool = False) -> int:
    name = "rollback" if rollback else "publish"
    parser = argparse.ArgumentParser(
        prog=f"python -m model_export {name}",
        description="Roll back to the bundle published before" if rollback else "Publish a registered bundle",
    )
    if not rollback:
        parser.add_argument("version")
        parser.add_argument("--override-gate", action="store_true", help="publish a bundle the gate rejected")
    database_argument(parser)
    parser.add_argument("--bundles", type=Path, help="re-point BUNDLES/current too")
    output_arguments(parser)
    args = parser.parse_args(argv)
    from model_export.bundle import point_current
    from service.store import registry

    engine = registry_engine(parser, args)
    previous: str | None
    try:
        if rollback:
            old, new = registry.rollback(engine)
            version, previous = new.version, old.version
            message = f"rolled back {old.version}; published {new.version}"
        else:
            before = registry.publish(engine, args.version, override_gate=args.override_gate)
            version, previous = args.version, before.version if before else None
            message = f"published {version}" + (f" (was {before.version})" if before else "")
    except registry.RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.bundles is not None and (args.bundles / version).is_dir():  # never a link to nothing
        point_current(args.bundles, version)
    report(args, {"published": version, "previous": previous}, message)
    return 0


REGISTRY_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "retrain": retrain_command,
    "bundles": list_bundles,
    "publish": publish_command,
    "rollback": lambda argv: publish_command(argv, rollback=True),
}


def sample_data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export sample-data",
        description="Write a small synthetic dataset in the data contract (interactions, items, users).",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--seed", type=int, default=0)
    output_arguments(parser)
    args = parser.parse_args(argv)
    dataset = generate_synthetic(preset("tiny").synthetic, seed=args.seed)
    paths = write_contract(dataset, args.out)
    if args.format == "parquet":
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        for name, path in list(paths.items()):
            # Every column read as text: ids stay strings, empty cells stay empty.
            options = pa_csv.ConvertOptions(column_types=None, strings_can_be_null=True, auto_dict_encode=False)
            table = pa_csv.read_csv(path, convert_options=options)
            paths[name] = path.with_suffix(".parquet")
            pq.write_table(table, paths[name])
            path.unlink()
    command = f"--interactions {paths['interactions']} --items {paths['items']} --users {paths['users']}"
    lines = [f"{name}: {path}" for name, path in paths.items()]
    report(
        args,
        {name: str(path) for name, path in paths.items()},
        "\n".join(lines) + f"\ntrain on it: python -m model_export train {command} --out bundles",
    )
    return 0


def in_group(run: Callable[[], int]) -> int:
    """`run()`; under torchrun with N processes, `run()` on rank 0 while the other ranks train each two-tower model
    with it (model_export/distributed.py)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # one process (torch is imported only once it is needed)
        return run()
    from model_export import distributed

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with distributed.launched() as group:
        if group is not None and not group.leader:
            from model_export.train import serve_two_tower

            serve_two_tower(group)
            return 0
        return run()


def build(args: argparse.Namespace, load: Callable[[ExportConfig], Dataset]) -> int:
    return in_group(lambda: _build(args, load))


def _build(args: argparse.Namespace, load: Callable[[ExportConfig], Dataset]) -> int:
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.if_missing and (args.out / "current").exists():
        version = (args.out / "current").resolve().name
        report(args, {"bundle": None, "version": version}, f"bundle {version} already in {args.out}: nothing to build")
        return 0
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    config = preset(args.preset, seed=args.seed)
    if args.epochs:
        config = replace(config, two_tower=replace(config.two_tower, epochs=args.epochs))
    if args.history_sampling:
        config = replace(config, two_tower=replace(config.two_tower, history_sampling=args.history_sampling))
    if args.serve_ranker:
        config = replace(config, serve_best_ordering=False)
    try:
        raw = load(config)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from model_export.build import build_bundle  # imports torch: after argument errors are reported

    result = build_bundle(raw, config, args.out, progress=not args.no_progress, fit=args.fit)
    users = result.metrics["pipeline"]["users"]
    fitted = "then refitted on all data" if args.fit == "all" else "the bundle as written"
    columns = ["recall@10", "ndcg@10", "recall@100", "hit_rate@10", "coverage@10"]
    lines = [
        f"\nbundle {result.version} -> {result.path}",
        f"validation ({raw.name}, temporal hold-out, seen items excluded, full ranking, {users} users; the model",
        f"selected on the split, {fitted})",
        f"{'model':<22}" + "".join(f"{c:>13}" for c in columns),
        *(
            f"{name:<22}" + "".join(f"{m[c]:>13.4f}" for c in columns)
            for name, m in result.metrics.items()
            if all(c in m for c in columns)  # a depth=<n> row not scored has its candidate recall alone
        ),
    ]
    manifest = json.loads((result.path / "manifest.json").read_text())
    ranking = manifest["candidates"]["ranking"]
    best = manifest["metrics"].get("ranking", {}).get("best_on_validation", ranking)
    lines.append(f"candidates ordered by: {ranking}; best on validation of the rankers and each source alone: {best}")
    recall = {
        name.removeprefix("depth="): m["candidate_recall"]
        for name, m in result.metrics.items()
        if name.startswith("depth=")
    }
    lines.append(
        f"ANN candidates served: {manifest['candidates']['depth']} (held-out positives among them by depth: "
        + ", ".join(f"{d} {r:.3f}" for d, r in recall.items())
        + f"); int8 on the CPU: {', '.join(manifest['onnx_int8_served']) or 'none'}"
    )
    stages = manifest["training"].get("stage_seconds", {})
    lines.append(
        f"built in {time.perf_counter() - started:.0f}s ("
        + ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in stages.items())
        + ")"
    )
    result_fields: dict[str, Any] = {"bundle": str(result.path), "version": result.version, "metrics": result.metrics}
    result_fields |= {"ranking": ranking, "seconds": round(time.perf_counter() - started, 1), "stages": stages}
    report(args, result_fields, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
