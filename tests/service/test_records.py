"""The system of record, on SQLite and on the real PostgreSQL (127.0.0.1:5432, database `test`; .ci/run makes sure
it is up): idempotent appends, recent events, access and deletion; two service instances sharing one database;
every acknowledged event still there, once, after a `kill -9`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from benchmarks.ingest import POSTGRES, fresh_postgres
from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.store import records as records_module
from service.store.records import NewEvent, Records
from service.store.schema import migrate
from tests.conftest import uvicorn_server


def postgres_available() -> bool:
    engine = sa.create_engine(POSTGRES, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


if os.environ.get("RECO_TEST_REQUIRE_POSTGRES") == "1" and not postgres_available():
    raise RuntimeError("RECO_TEST_REQUIRE_POSTGRES=1 but no PostgreSQL answers at 127.0.0.1:5432 (database test)")
needs_postgres = pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL at 127.0.0.1:5432")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reco.sqlite3'}"
        return
    with fresh_postgres() as url:
        yield url


def test_appends_are_idempotent_by_event_id_and_deletion_leaves_nothing(database: str) -> None:
    migrate(database)
    migrate(database)  # at head already: nothing to do
    records = Records(database, timeout_s=2, threads=2, recent=3)
    try:
        first = [
            NewEvent("u", "i1", "click", 10.0, "e1"),
            NewEvent("u", "i2", "dislike", None, "e2"),
            NewEvent("u", "i2", "dislike", None, "e2"),  # twice in one batch
            NewEvent("v", "i3", "view", None),
        ]
        # Per event, whether it is new; per user, the latest events (the cap: 3) the write leaves, oldest first.
        assert records.append(first) == ([True, True, False, True], {"u": ["i1", "!i2"], "v": ["i3"]})
        again = [NewEvent("u", "i1", "click", 10.0, "e1"), NewEvent("u", "i4", "like", None)]
        assert records.append(again) == ([False, True], {"u": ["i1", "!i2", "i4"]})
        assert records.recent_entries("u") == ["i1", "!i2", "i4"]
        more = [NewEvent("w", "i9", "view", None), NewEvent("v", "i5", "view", None), NewEvent("v", "i6", "view", None)]
        assert records.append(more) == ([True, True, True], {"v": ["i3", "i5", "i6"], "w": ["i9"]})
        assert records.append([NewEvent("v", "i7", "view", None, "e7")]) == ([True], {"v": ["i5", "i6", "i7"]})
        profile, stored = records.user("u")
        assert profile is not None
        assert profile["first_seen"] <= profile["last_seen"]
        assert [(e.event_id, e.item_id, e.event_type) for e in stored] == [
            ("e1", "i1", "click"),
            ("e2", "i2", "dislike"),
            (None, "i4", "like"),
        ]
        assert records.delete_user("u") == 3
        assert records.user("u") == (None, [])
        assert records.recent_entries("v") == ["i5", "i6", "i7"]  # nobody else touched
        with records.engine.connect() as c:
            left = c.execute(sa.text("SELECT count(*) FROM events WHERE user_id = 'u'")).scalar_one()
            logged = c.execute(sa.text("SELECT events_deleted FROM deletions WHERE user_id = 'u'")).scalar_one()
        assert (left, logged) == (0, 3)
        assert records.deletions_after(0)[-1][1:2] == ("u",)
        assert records.deletions_after(records.deletions_after(0)[-1][0]) == []

        async def read_at_once() -> list[list[str]]:  # coalesced into one query per batch; each gets its own
            return list(await asyncio.gather(*(records.recent(u) for u in ["v", "w", "u", "v", "nobody"])))

        assert asyncio.run(read_at_once()) == [["i5", "i6", "i7"], ["i9"], [], ["i5", "i6", "i7"], []]
    finally:
        records.close()


@needs_postgres
def test_two_instances_share_one_database(settings: Settings, tiny_bundle: Path, tmp_path: Path) -> None:
    """Events posted to one instance shape the other's next recommendation (no Redis: each has only its own
    in-process cache, so the second reads the database)."""
    bundle = load_bundle(tiny_bundle)
    user_id = bundle.user_ids[5]
    with fresh_postgres() as url:
        shared = {"database_url": SecretStr(url)}
        one = create_app(settings.model_copy(update=shared | {"live_items_path": tmp_path / "one.jsonl"}))
        other = create_app(settings.model_copy(update=shared | {"live_items_path": tmp_path / "other.jsonl"}))
        with TestClient(one) as a, TestClient(other) as b:
            before = [
                it["item_id"]
                for it in b.post("/v1/recommendations", json={"user_id": user_id, "k": 10}).json()["items"]
            ]
            clicked = before[:3]
            events = [{"user_id": user_id, "item_id": i, "event_id": f"ev-{i}"} for i in clicked]
            assert a.post("/v1/events", json={"events": events}).json()["duplicates"] == 0
            assert b.post("/v1/events", json={"events": events}).json()["duplicates"] == 3  # a retry elsewhere
            # b had cached the user's (empty) events when it served them: its cache was filled again on the write.
            after = [
                it["item_id"]
                for it in b.post("/v1/recommendations", json={"user_id": user_id, "k": 10}).json()["items"]
            ]
            assert not set(clicked) & set(after)
            assert len(b.get(f"/v1/users/{user_id}").json()["events"]) == 3


def post(url: str, path: str, body: object) -> dict:  # type: ignore[type-arg]
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def get(url: str, path: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_every_acknowledged_event_survives_kill_9_once(backend: str, tiny_bundle: Path, tmp_path: Path) -> None:
    """A real server process takes events (some retried), is killed with SIGKILL right after its last answer,
    and restarted: every acknowledged event is in the database, none twice."""
    bundle = load_bundle(tiny_bundle)
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'reco.sqlite3'}" if backend == "sqlite" else stack.enter_context(fresh_postgres())
        env = {
            "RECO_BUNDLE_PATH": str(tiny_bundle),
            "RECO_DEV_MODE": "true",
            "RECO_DATABASE_URL": url,
            "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live.jsonl"),
            "RECO_ACCESS_LOG": "false",
            "RECO_WARMUP_REQUESTS": "1",
        }
        users = [f"kill-{n}" for n in range(5)]
        acknowledged: dict[str, list[str]] = {u: [] for u in users}
        with uvicorn_server(env) as (server, process):
            for n in range(40):
                user = users[n % len(users)]
                event = {"user_id": user, "item_id": bundle.item_ids[n], "event_id": f"{user}-{n}"}
                answer = post(server, "/v1/events", {"events": [event]})
                assert answer["accepted"] == 1
                acknowledged[user].append(event["item_id"])
                if n % 7 == 0:  # a client retry of an acknowledged event
                    assert post(server, "/v1/events", {"events": [event]})["duplicates"] == 1
            process.send_signal(signal.SIGKILL)
            process.wait()
        with uvicorn_server(env) as (server, _):
            for user in users:
                stored = get(server, f"/v1/users/{user}")["events"]
                assert [e["item_id"] for e in stored] == acknowledged[user]
                assert len({e["event_id"] for e in stored}) == len(stored)


def test_processes_starting_at_once_migrate_one_after_the_other(database: str) -> None:
    """Several service processes (RECO_WORKERS, or replicas) migrating a fresh database at the same moment: each
    succeeds, and the schema is at head once."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(migrate, [database] * 4)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(Path(records_module.__file__).with_name("migrations")))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    assert head >= "0004"  # the registry's tables
    engine = sa.create_engine(database)
    try:
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    finally:
        engine.dispose()


@needs_postgres
def test_two_processes_share_the_database_and_redis(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two `uvicorn` processes on one PostgreSQL and one Redis: events posted to one shape the other's next
    recommendation, and either tells the whole story of the user."""
    from tests.conftest import redis_available

    if not redis_available():
        pytest.skip("no Redis at 127.0.0.1:6379")
    bundle = load_bundle(tiny_bundle)
    user_id = f"shared-{uuid.uuid4().hex[:8]}"
    with fresh_postgres() as url:
        env = {
            "RECO_BUNDLE_PATH": str(tiny_bundle),
            "RECO_DEV_MODE": "true",
            "RECO_DATABASE_URL": url,
            "RECO_REDIS_URL": "redis://127.0.0.1:6379/13",
            "RECO_ACCESS_LOG": "false",
            "RECO_WARMUP_REQUESTS": "1",
        }
        one_env = env | {"RECO_LIVE_ITEMS_PATH": str(tmp_path / "one.jsonl")}
        other_env = env | {"RECO_LIVE_ITEMS_PATH": str(tmp_path / "other.jsonl")}
        with uvicorn_server(one_env) as (one, _), uvicorn_server(other_env) as (other, _):
            before = post(other, "/v1/recommendations", {"user_id": user_id, "k": 10})["items"]
            clicked = [it["item_id"] for it in before[:3]]
            events = [{"user_id": user_id, "item_id": i, "event_id": f"{user_id}-{i}"} for i in clicked]
            assert post(one, "/v1/events", {"events": events})["duplicates"] == 0
            after = post(other, "/v1/recommendations", {"user_id": user_id, "k": 10})["items"]
            assert not set(clicked) & {it["item_id"] for it in after}
            assert [e["item_id"] for e in get(other, f"/v1/users/{user_id}")["events"]] == clicked
            assert len(bundle.item_ids) > 0


def test_a_hung_database_under_load_costs_no_request(tiny_bundle: Path, tmp_path: Path) -> None:
    """The database accepts connections and never answers (a hung server): under steady load every
    recommendation is still served, and the breaker keeps the typical request fast; an event write is a 503."""
    import socket

    from benchmarks.redis_hang import SteadyLoad, known_users
    from benchmarks.serve import Server

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)  # the kernel completes handshakes; nobody ever reads or writes
    port = listener.getsockname()[1]
    env = {
        "RECO_DEV_MODE": "true",
        "RECO_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/test",
        "RECO_DATABASE_MIGRATE": "false",
        "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live.jsonl"),
        "RECO_WARMUP_REQUESTS": "1",
    }
    server = Server(tiny_bundle, env)
    try:
        with SteadyLoad(server.url, 4, known_users(tiny_bundle, 30)) as load:
            import time

            time.sleep(6)
            status = post_status(server.url, "/v1/events", {"events": [{"user_id": "1", "item_id": "1"}]})
        results = list(load.results)
    finally:
        server.stop()
        listener.close()
    assert status == 503
    assert len(results) > 50
    assert {s for _, s, _ in results} == {200}
    seconds = sorted(s for _, _, s in results)
    assert seconds[len(seconds) // 2] < 0.2  # the breaker skips the database: the median request waits for nothing


@needs_postgres
def test_a_connection_the_server_dropped_fails_one_call_and_the_pool_recovers() -> None:
    """No ping before each call (a round trip saved on every event write): a server restart's dropped connections
    cost the one call that meets them (RecordsUnavailable, never a wrong answer), then the pool is replaced."""
    import asyncio

    from service.store.records import RecordsUnavailable

    with fresh_postgres() as url:
        migrate(url)
        records = Records(url, timeout_s=2, threads=2, recent=5)
        try:
            records.append([NewEvent("u", "i1", "click", None, "a")])
            admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:  # as a restart does: every connection to the database closed
                name = sa.make_url(url).database
                c.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
                )
            admin.dispose()

            async def write(event_id: str) -> bool:
                try:
                    await records.append_events([NewEvent("u", "i2", "click", None, event_id)])
                    return True
                except RecordsUnavailable:
                    return False

            outcomes = [asyncio.run(write(f"b{n}")) for n in range(4)]
            assert outcomes.count(False) <= 1, outcomes
            assert outcomes[-1]
            stored = {e.event_id for e in records.user("u")[1]}
            assert stored == {"a"} | {f"b{n}" for n, ok in enumerate(outcomes) if ok}  # a failed call stored nothing
        finally:
            records.close()


def post_status(url: str, path: str, body: object) -> int:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
