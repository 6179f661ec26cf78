"""Training from the system of record: a dataset imported once (a second import adds nothing), events posted to
the service and a user deleted through it, then `train --database`: the bundle learns the new user's events and
holds nothing of the deleted one."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from benchmarks.ingest import fresh_postgres
from model_export.contract import load_contract
from model_export.database import import_tables, load_database
from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from tests.service.test_records import needs_postgres

CLI = [sys.executable, "-m", "model_export"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sample")
    subprocess.run([*CLI, "sample-data", "--out", str(out)], check=True, capture_output=True)
    return {name: out / f"{name}.csv" for name in ("interactions", "items", "users")}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_import_once_and_read_back_the_same_data(backend: str, sample: dict[str, Path], tmp_path: Path) -> None:
    sqlite = contextlib.nullcontext(f"sqlite:///{tmp_path / 'reco.sqlite3'}")
    with fresh_postgres() if backend == "postgresql" else sqlite as url:
        first = import_tables(url, sample["interactions"], sample["items"], sample["users"])
        again = import_tables(url, sample["interactions"], sample["items"], sample["users"])
        assert first["events"] > 0
        assert again["events"] == 0  # the same file again adds nothing
        original = load_contract(sample["interactions"], sample["items"], sample["users"])
        back = load_database(url)
        assert sorted(back.item_ids) == sorted(original.item_ids)
        assert len(back.interactions) == len(original.interactions)
        assert sorted(back.user_ids) == sorted(original.user_ids)
        assert back.user_categorical_names == original.user_categorical_names


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_the_streamed_read_is_the_contract_read_of_the_exported_tables(
    backend: str, sample: dict[str, Path], tmp_path: Path
) -> None:
    """`load_database` streams the events in chunks (here 7 rows, so that chunks split users and items) straight
    into arrays; it must give what the contract reader gives on `export_tables`' CSVs of the same database: the
    same ids in the same order, interactions, ratings (a dislike, a rating, neither), features, and an event on an
    item the database does not list left out."""
    import numpy as np
    import sqlalchemy as sa

    from model_export.database import export_tables
    from service.store.schema import events, live_items

    sqlite = contextlib.nullcontext(f"sqlite:///{tmp_path / 'reco.sqlite3'}")
    with fresh_postgres() if backend == "postgresql" else sqlite as url:
        import_tables(url, sample["interactions"], sample["items"], sample["users"])
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            live = {"item_id": "live-1", "title": "Live", "genres": ["g01", "new"], "year": 2031}
            connection.execute(
                sa.insert(live_items), [{"item_id": "live-1", "record": json.dumps(live), "created_at": 1.7e9}]
            )
            base = {"received_at": 1.7e9, "timestamp": None, "rating": None}
            connection.execute(
                sa.insert(events),
                [
                    base | {"event_id": "e1", "user_id": "new-u", "item_id": "live-1", "event_type": "like"},
                    base | {"event_id": "e2", "user_id": "new-u", "item_id": "gone", "event_type": "view"},
                    base | {"event_id": "e3", "user_id": "only-gone", "item_id": "gone", "event_type": "view"},
                    base | {"event_id": "e4", "user_id": "new-u", "item_id": "live-1", "event_type": "dislike"},
                    base
                    | {"event_id": "e5", "user_id": "1", "item_id": "live-1", "event_type": "click"}
                    | {"timestamp": 1.6e9 + 0.9996, "rating": 2.5},
                ],
            )
        engine.dispose()
        paths = export_tables(url, tmp_path / "export")
        read = load_contract(paths["interactions"], paths["items"], paths["users"], name="database")
        streamed = load_database(url, chunk=7)
    assert streamed.user_ids == read.user_ids
    assert "only-gone" not in streamed.user_ids  # its one event was on an item the database does not list
    assert streamed.item_ids == read.item_ids
    assert streamed.item_ids[-1] == "live-1"
    for column in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(streamed.interactions, column), getattr(read.interactions, column))
    assert streamed.interactions.rating[-3:].tolist() == [np.inf, -np.inf, 2.5]
    assert streamed.item_titles == read.item_titles
    assert streamed.item_dense_names == read.item_dense_names
    np.testing.assert_array_equal(streamed.item_dense, read.item_dense)
    assert streamed.item_descriptions == read.item_descriptions
    assert streamed.user_categorical_names == read.user_categorical_names
    np.testing.assert_array_equal(streamed.user_categorical, read.user_categorical)
    assert streamed.user_categorical_cardinalities == read.user_categorical_cardinalities
    assert streamed.read_at is not None


def test_train_on_the_database_learns_new_events_and_forgets_deleted_users(
    sample: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    import_tables(url, sample["interactions"], sample["items"], sample["users"])
    served = settings.model_copy(update={"database_url": SecretStr(url)})
    bundle = load_bundle(settings.bundle_path)
    with TestClient(create_app(served)) as client:
        item = {"title": "Added live", "genres": ["g01"], "year": 2030, "description": "Put while serving."}
        assert client.put("/v1/items/live-1", json=item).status_code == 200
        events = [{"user_id": "brand-new", "item_id": bundle.item_ids[i], "event_type": "like"} for i in range(4)]
        events.append({"user_id": "brand-new", "item_id": "live-1", "event_type": "like"})
        assert client.post("/v1/events", json={"events": events}).status_code == 200
        assert client.delete("/v1/users/1").status_code == 200
    command = [*CLI, "train", "--database", url, "--out", str(tmp_path / "bundles"), "--preset", "tiny", "--json"]
    built = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    trained = load_bundle(Path(json.loads(built.stdout)["bundle"]))
    assert "brand-new" in trained.user_index  # learnt from the events posted to the service
    assert "1" not in trained.user_index  # deleted: none of their rows reached training
    assert "live-1" in trained.item_index  # the item added while serving is a trained item now
    assert trained.manifest.dataset["name"] == "database"
    # When the database was read: a deletion before it is not masked in this bundle (it holds none of the user).
    assert isinstance(trained.manifest.dataset["read_at"], float)
