"""The data contract (docs/data.md): tables in, the exporter's Dataset out; MovieLens and the synthetic data fit it;
every error names the file, the row and the column; the CLI trains a bundle the service serves from such tables."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_export.config import SyntheticConfig
from model_export.contract import NEGATIVE, POSITIVE, load_contract, write_contract
from model_export.data import DataError, Dataset, generate_synthetic, load_movielens, write_movielens_csv
from service.recommend.features import year_of
from tests.conftest import ML100K


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def categories(ds: Dataset) -> list[set[str]]:
    names = [n.removeprefix("genre:") for n in ds.item_dense_names if n.startswith("genre:")]
    return [{g for j, g in enumerate(names) if ds.item_dense[i, j] > 0} for i in range(ds.n_items)]


def partition(codes: np.ndarray) -> list[frozenset[int]]:
    """Which rows share a code (the codes' labels aside); 0 (unknown) kept apart."""
    groups: dict[int, set[int]] = {}
    for row, code in enumerate(codes.tolist()):
        groups.setdefault(code if code else -row - 1, set()).add(row)
    return sorted(frozenset(g) for g in groups.values())  # type: ignore[type-var]


def assert_same_data(original: Dataset, loaded: Dataset) -> None:
    assert loaded.item_ids == original.item_ids
    assert loaded.item_titles == [t.strip() for t in original.item_titles]  # cells are trimmed
    assert categories(loaded) == categories(original)
    np.testing.assert_array_equal(
        year_of(loaded.item_dense, loaded.item_dense_names), year_of(original.item_dense, original.item_dense_names)
    )
    # The same interactions, user for user (users are indexed by first appearance in the log).
    a, b = original.interactions, loaded.interactions
    assert [loaded.user_ids[u] for u in b.user] == [original.user_ids[u] for u in a.user]
    np.testing.assert_array_equal(b.item, a.item)
    np.testing.assert_array_equal(b.rating, a.rating)
    np.testing.assert_array_equal(b.timestamp, a.timestamp)
    assert loaded.user_categorical_names == original.user_categorical_names
    order = [original.user_ids.index(u) for u in loaded.user_ids]
    for j in range(len(original.user_categorical_names)):
        assert partition(loaded.user_categorical[:, j]) == partition(original.user_categorical[order, j])


def test_synthetic_data_written_in_the_contract_reads_back_the_same(tmp_path: Path) -> None:
    original = generate_synthetic(SyntheticConfig(n_users=50, n_items=40, n_genres=5, mean_interactions=8), seed=3)
    paths = write_contract(original, tmp_path)
    assert_same_data(original, load_contract(paths["interactions"], paths["items"], paths["users"]))


def test_movielens_fits_the_contract(tmp_path: Path) -> None:
    """A MovieLens download (the csv layout, written here from synthetic data) read by its reader, written in the
    contract and read back: the same data."""
    source = generate_synthetic(SyntheticConfig(n_users=40, n_items=30, n_genres=4, mean_interactions=6), seed=1)
    write_movielens_csv(source, source.interactions, tmp_path / "ml")
    original = load_movielens(tmp_path / "ml")
    paths = write_contract(original, tmp_path / "contract")
    assert_same_data(original, load_contract(paths["interactions"], paths["items"]))


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_ml100k_fits_the_contract(tmp_path: Path) -> None:
    original = load_movielens(ML100K)
    paths = write_contract(original, tmp_path)  # never kept: the data's terms forbid copies
    assert_same_data(original, load_contract(paths["interactions"], paths["items"], paths["users"]))


def test_implicit_feedback_any_ids_iso_times_and_item_features(tmp_path: Path) -> None:
    items = write_csv(
        tmp_path / "items.csv",
        ["item_id", "title", "categories", "price", "brand", "description"],
        [
            ["sku/1", "Kettle", "kitchen|electric", "30", "Acme", "A kettle."],
            ["sku:2", "", "kitchen", "", "Bolt", ""],
            ["ünï 3", "Lamp", "", "90", "", "A lamp."],
        ],
    )
    log = write_csv(
        tmp_path / "events.csv",
        ["user_id", "item_id", "timestamp", "event_type", "weight"],
        [
            ["u@1", "sku/1", "2026-01-01T10:00:00Z", "view", ""],
            ["u@1", "sku:2", "1767262000", "dislike", ""],
            ["007", "ünï 3", "1767262001.5", "", "0"],
            ["007", "sku/1", "2026-01-02T00:00:00+00:00", "purchase", "2"],
        ],
    )
    ds = load_contract(log, items)
    assert ds.item_ids == ["sku/1", "sku:2", "ünï 3"]
    assert ds.user_ids == ["u@1", "007"]
    assert ds.item_titles == ["Kettle", "sku:2", "Lamp"]  # an empty title falls back to the id
    assert ds.interactions.rating.tolist() == [POSITIVE, NEGATIVE, NEGATIVE, POSITIVE]
    assert ds.interactions.timestamp.tolist() == [1767261600, 1767262000, 1767262001, 1767312000]
    assert categories(ds) == [{"kitchen", "electric"}, {"kitchen"}, set()]
    price = ds.item_dense[:, ds.item_dense_names.index("num:price")].tolist()
    assert price == [0.0, 0.5, 1.0]  # scaled to [0, 1]; missing: the midpoint (as for an item added live)
    assert ds.item_descriptions == ["A kettle. brand: Acme", "brand: Bolt", "A lamp."]


def test_without_an_items_table_the_catalogue_is_what_the_log_names(tmp_path: Path) -> None:
    log = write_csv(
        tmp_path / "log.csv",
        ["user_id", "item_id", "timestamp"],
        [["u1", "b", "3"], ["u2", "a", "1"], ["u1", "a", "2"], ["u2", "c", "4"]],
    )
    ds = load_contract(log)
    assert ds.item_ids == ["b", "a", "c"]  # in order of first appearance
    assert ds.item_titles == ds.item_ids
    assert ds.item_dense.shape == (3, 0)
    assert ds.interactions.item.tolist() == [0, 1, 1, 2]
    assert not ds.has_text  # nothing for the text encoder: the exporter leaves text features off
    items = write_csv(tmp_path / "items.csv", ["item_id", "title"], [["a", "Kettle"], ["b", ""], ["c", ""]])
    assert load_contract(log, items).has_text


def test_parquet_tables_read_as_their_csv(tmp_path: Path) -> None:
    source = generate_synthetic(SyntheticConfig(n_users=30, n_items=20, n_genres=3, mean_interactions=5), seed=2)
    paths = write_contract(source, tmp_path)
    from_csv = load_contract(paths["interactions"], paths["items"], paths["users"])
    parquet = {}
    for name, path in paths.items():
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        columns = {h: [r[j] or None for r in rows[1:]] for j, h in enumerate(rows[0])}
        if name == "interactions":  # typed columns, as a data warehouse would write them
            columns["timestamp"] = [int(v) for v in columns["timestamp"]]  # type: ignore[arg-type,misc]
            columns["user_id"] = [int(v) for v in columns["user_id"]]  # type: ignore[arg-type,misc]
        parquet[name] = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(columns), parquet[name])
    assert_same_data(from_csv, load_contract(parquet["interactions"], parquet["items"], parquet["users"]))


@pytest.mark.parametrize(
    ("table", "rows", "message"),
    [
        ("items", [["i1", "A"], ["i1", "B"]], r"items\.csv: line 3, column 'item_id': item 'i1' appears twice"),
        ("log", [["u", "nope", "1"]], r"log\.csv: line 2, column 'item_id': item 'nope' is not in .*items\.csv"),
        ("log", [["u", "i1", "1"], ["u", "i1", "yesterday"]], r"log\.csv: line 3, column 'timestamp': neither"),
        ("log", [["u", "i1", ""]], r"log\.csv: line 2, column 'timestamp': empty"),
        ("log", [["", "i1", "1"]], r"log\.csv: line 2, column 'user_id': empty id"),
        ("log_typed", [["u", "i1", "1", "teleport"]], r"line 2, column 'event_type': 'teleport' is not one of"),
        ("log_rated", [["u", "i1", "1", "five"]], r"line 2, column 'rating': not a number: 'five'"),
        ("log", [["u", "i1"]], r"log\.csv: line 2: 2 fields, the header has 3"),
    ],
)
def test_errors_name_the_file_row_and_column(tmp_path: Path, table: str, rows: list[list[str]], message: str) -> None:
    items = write_csv(tmp_path / "items.csv", ["item_id", "title"], rows if table == "items" else [["i1", "A"]])
    header = ["user_id", "item_id", "timestamp"]
    header += ["event_type"] if table == "log_typed" else ["rating"] if table == "log_rated" else []
    log = write_csv(tmp_path / "log.csv", header, rows if table.startswith("log") else [["u", "i1", "1"]])
    with pytest.raises(DataError, match=message):
        load_contract(log, items)


def test_a_missing_column_or_file_is_named(tmp_path: Path) -> None:
    items = write_csv(tmp_path / "items.csv", ["item_id"], [["i1"]])
    log = write_csv(tmp_path / "log.csv", ["user", "item_id", "timestamp"], [["u", "i1", "1"]])
    with pytest.raises(DataError, match=r"log\.csv: missing required column\(s\) \['user_id'\]"):
        load_contract(log, items)
    with pytest.raises(DataError, match=r"nothere\.csv: file not found"):
        load_contract(tmp_path / "nothere.csv", items)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable Parquet file"):
        load_contract(broken, items)


def test_sample_data_trains_a_bundle_the_service_serves(tmp_path: Path) -> None:
    """`sample-data` then `train` from its files, as a user with their own data runs them: the bundle loads in
    the service and recommends."""
    cli = [sys.executable, "-m", "model_export"]
    subprocess.run([*cli, "sample-data", "--out", str(tmp_path / "data"), "--format", "parquet"], check=True)
    files = {name: tmp_path / "data" / f"{name}.parquet" for name in ("interactions", "items", "users")}
    assert all(p.is_file() for p in files.values())
    command = [*cli, "train", *(a for name, p in files.items() for a in (f"--{name}", str(p)))]
    command += ["--out", str(tmp_path / "bundles"), "--preset", "tiny", "--no-progress", "--name", "sample", "--json"]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    bundle = Path(json.loads(built.stdout)["bundle"])  # --json: the result as one JSON line
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "sample"

    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.core.settings import Settings

    settings = Settings(bundle_path=bundle, dev_mode=True, warmup_requests=1, live_items_path=tmp_path / "live.jsonl")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/recommendations", json={"user_id": "1", "k": 5})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 5


def test_a_bad_table_is_a_clear_cli_error(tmp_path: Path) -> None:
    items = write_csv(tmp_path / "items.csv", ["item_id"], [["i1"]])
    log = write_csv(tmp_path / "log.csv", ["user_id", "item_id", "timestamp"], [["u", "i9", "1"]])
    command = [sys.executable, "-m", "model_export", "train", "--interactions", str(log), "--items", str(items)]
    run = subprocess.run([*command, "--out", str(tmp_path / "b")], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "log.csv: line 2, column 'item_id': item 'i9' is not in" in run.stderr
    assert "Traceback" not in run.stderr
