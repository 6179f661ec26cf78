"""Two-tower training in a process group (model_export/distributed.py): two processes learn what one does."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model_export.config import ExportConfig, preset
from model_export.data import Dataset, Interactions, generate_synthetic, implicit, temporal_split

ROOT = Path(__file__).resolve().parents[2]


def _setup() -> tuple[Dataset, Interactions, ExportConfig]:
    """The tiny log, cut to a whole number of even batches (no example is left out of a share), and a recipe without
    the random parts that differ between ranks (the id dropouts draw from each rank's own generator)."""
    config = preset("tiny")
    config = replace(
        config,
        two_tower=replace(config.two_tower, user_id_dropout=0.0, item_id_dropout=0.0, batch_size=128, epochs=2),
    )
    dataset = implicit(generate_synthetic(config.synthetic, seed=0), config.min_rating)
    train, _ = temporal_split(dataset.interactions, config.holdout_fraction)
    keep = np.sort(np.random.default_rng(0).permutation(len(train))[: len(train) // 128 * 128])
    return dataset, train.take(keep), config


def _weights(towers: tuple) -> dict[str, np.ndarray]:
    user_tower, item_tower, _ = towers
    return {
        f"{side}.{name}": value.detach().numpy().copy()
        for side, tower in (("user", user_tower), ("item", item_tower))
        for name, value in tower.state_dict().items()
    }


def _rank(rank: int, port: int, out: str) -> None:
    """One rank of a 2-process group, as torchrun would start it; rank 0 saves the weights it trained."""
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    import torch

    from model_export import distributed
    from model_export.train import seed_everything, serve_two_tower, train_two_tower

    torch.set_num_threads(1)
    dataset, train, config = _setup()
    with distributed.launched() as group:
        assert group is not None
        assert group.world_size == 2
        if group.rank:
            serve_two_tower(group)
            return
        seed_everything(config.seed)
        np.savez(out, **_weights(train_two_tower(dataset, train, config, progress=False)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_train_the_weights_one_process_trains(tmp_path: Path) -> None:
    """Each rank trains on half of every batch, scored against the whole batch's positives: the gradients the group
    averages are the single process's, so two ranks end (two epochs, lazy Adam on the id tables, AdamW on the rest)
    where one process ends, to float rounding."""
    import torch
    import torch.multiprocessing as mp

    from model_export.train import seed_everything, train_two_tower

    dataset, train, config = _setup()
    seed_everything(config.seed)
    torch.set_num_threads(1)
    alone = _weights(train_two_tower(dataset, train, config, progress=False))
    out = tmp_path / "group.npz"
    mp.spawn(_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    together = dict(np.load(out, allow_pickle=False))
    assert together.keys() == alone.keys()
    moved = 0
    for name, value in alone.items():
        np.testing.assert_allclose(together[name], value, atol=2e-4, err_msg=name)
        moved += int(name.endswith("weight") and not np.allclose(value, 0))
    assert moved > 5


def test_the_cli_under_torchrun_writes_one_bundle(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m model_export ...`: the same command, two processes; rank 0 alone writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    command += [str(_free_port()), "-m", "model_export", "--preset", "tiny", "--out", str(tmp_path)]
    run = subprocess.run(
        [*command, "--no-progress", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = re.search(r"rank 1: (\d+) training jobs done", run.stderr)
    assert jobs, run.stderr[-3000:]
    assert int(jobs[1]) >= 2  # rank 1 trained beside rank 0 (the selection fit, the refit ...)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1
    bundles = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "current"]
    assert [b.name for b in bundles] == [results[0]["version"]]
    assert results[0]["metrics"]["pipeline"]["ndcg@10"] > 0


def test_retrain_under_torchrun_gates_and_publishes_once(tmp_path: Path) -> None:
    """The Kubernetes job's command: `retrain` from the database on two processes; rank 0 alone reads the database,
    gates, writes and publishes, rank 1 trains each two-tower model with it."""
    from model_export.database import import_tables

    sample = tmp_path / "sample"
    subprocess.run([sys.executable, "-m", "model_export", "sample-data", "--out", str(sample)], check=True, cwd=ROOT)
    url = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    import_tables(url, sample / "interactions.csv", sample / "items.csv", sample / "users.csv")
    bundles = tmp_path / "bundles"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    command += [str(_free_port()), "-m", "model_export", "retrain", "--database", url, "--bundles", str(bundles)]
    run = subprocess.run(
        [*command, "--preset", "tiny", "--no-progress", "--json"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert result["result"] == "published", result
    assert (bundles / "current").resolve().name == result["version"]
    jobs = re.search(r"rank 1: (\d+) training jobs done", run.stderr)
    assert jobs, run.stderr[-3000:]
    assert int(jobs[1]) >= 2  # the gate's build and the bundle's


@pytest.mark.parametrize("world_size", [2, 3])
def test_shares_are_equal_contiguous_parts_of_the_batch(world_size: int) -> None:
    import torch

    from model_export.distributed import Group

    batch = torch.arange(10)
    shares = [Group(rank, world_size).shard(batch) for rank in range(world_size)]
    assert len({len(s) for s in shares}) == 1
    assert torch.cat(shares).tolist() == list(range(10 - 10 % world_size))
