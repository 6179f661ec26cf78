"""The retrain loop and the replicas' followers survive what production does to them: PostgreSQL restarting (every
connection dropped, new ones refused for a while) and the bundles root filling up. No half-written bundle is ever
published or left behind; the bundle serving keeps serving; once the database is back, everything carries on."""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from model_export.bundle import BundleWriter, point_current
from model_export.config import preset
from model_export.contract import write_contract
from model_export.data import generate_synthetic
from model_export.database import import_tables
from model_export.retrain import retrain
from service.api.app import create_app
from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.store import registry
from service.store.schema import deletions, migrate, open_engine
from tests.conftest import TINY_MARGIN, eventually, free_port
from tests.service.test_records import needs_postgres


class TcpProxy:
    """127.0.0.1:`port` forwarded to `target`. `down()` is a database restarting: every connection through it is
    dropped and new ones are refused; `up()` accepts again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        assert self._listener is not None
        self._listener.close()
        self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: down
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def serving(client: TestClient) -> str:
    body: dict[str, Any] = client.get("/readyz").json()
    return str(body["bundle_version"])


def recommend(client: TestClient, user_id: str) -> list[str]:
    response = client.post("/v1/recommendations", json={"user_id": user_id, "k": 5})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle of its own (another seed: another version than the session's tiny bundle)."""
    from model_export.build import build_bundle

    config = preset("tiny", seed=1)
    out = tmp_path_factory.mktemp("second")
    return build_bundle(generate_synthetic(config.synthetic, seed=1), config, out, progress=False).path


@contextlib.contextmanager
def proxied_postgres() -> Iterator[tuple[str, str, TcpProxy]]:
    """(direct URL, URL through a proxy, the proxy) of a fresh PostgreSQL database."""
    from benchmarks.ingest import fresh_postgres

    with fresh_postgres() as url:
        parsed = sa.make_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        try:
            yield url, parsed.set(port=proxy.port).render_as_string(hide_password=False), proxy
        finally:
            with contextlib.suppress(AssertionError):
                proxy.down()


@needs_postgres
def test_followers_carry_on_after_a_postgres_restart(
    tiny_bundle: Path, second_bundle: Path, settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    for bundle in (tiny_bundle, second_bundle):
        shutil.copytree(bundle, root / bundle.name)
    first, second = load_bundle(root / tiny_bundle.name), load_bundle(root / second_bundle.name)
    user = first.user_ids[0]
    with proxied_postgres() as (direct, through, proxy):
        migrate(direct)
        engine = open_engine(direct, 10.0)
        registry.register(engine, first.version, {}, {}, "first", publish=True)
        update = {
            "bundle_path": root / first.version,
            "bundles_root": root,
            "database_url": SecretStr(through),
            "bundle_sync_s": 0.2,
        }
        try:
            with TestClient(create_app(settings.model_copy(update=update))) as client:
                assert serving(client) == first.version
                before = recommend(client, user)

                proxy.down()  # PostgreSQL restarting: connections dropped, new ones refused
                registry.register(engine, second.version, {}, {}, "passed", publish=False)
                time.sleep(1.0)  # several sync rounds fail meanwhile
                assert recommend(client, user) == before  # requests are served from what is loaded
                assert serving(client) == first.version
                # What happens while the replica cannot see it: another replica publishes, and deletes the user.
                with engine.begin() as c:
                    c.execute(sa.insert(deletions).values(user_id=user, deleted_at=time.time(), events_deleted=0))
                registry.publish(engine, second.version)
                time.sleep(1.0)

                proxy.up()  # back: the followers catch up
                assert eventually(lambda: serving(client) == second.version, seconds=30)
                # the deletion reached this replica too; a new user's list is the unknown user's
                for_unknown = recommend(client, "never-seen-user")
                if user in second.user_index:
                    assert eventually(lambda: recommend(client, user) == for_unknown, seconds=10)
                assert client.get(f"/v1/users/{user}").status_code == 200
        finally:
            engine.dispose()


@needs_postgres
def test_the_retrain_loop_outlives_a_postgres_restart(tmp_path: Path) -> None:
    config = preset("tiny")
    paths = write_contract(generate_synthetic(config.synthetic, seed=config.seed), tmp_path / "data")
    with proxied_postgres() as (direct, through, proxy):
        import_tables(direct, paths["interactions"], paths["items"], paths["users"])
        engine = open_engine(direct, 10.0)
        # Every run is a quick `skipped` (more users asked for than there are): the loop itself is under test.
        command = [sys.executable, "-m", "model_export", "retrain", "--database", through, "--bundles"]
        command += [str(tmp_path / "bundles"), "--every", "0.3", "--min-users", "1000000", "--no-progress"]
        log = tmp_path / "retrain.log"
        with log.open("wb") as out:
            loop = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out)
        try:

            def runs() -> list[registry.Retrain]:
                return registry.last_retrains(engine, n=1000)

            assert eventually(lambda: len(runs()) >= 1, seconds=60), log.read_text()[-3000:]
            proxy.down()
            time.sleep(2.0)  # runs fail meanwhile: they cannot even be recorded
            assert loop.poll() is None  # the loop is still there
            back = time.time()
            proxy.up()
            assert eventually(lambda: any(r.started_at >= back for r in runs()), seconds=60), log.read_text()[-3000:]
            assert loop.poll() is None
            assert {r.result for r in runs()} <= {"skipped", "failed"}
        finally:
            loop.terminate()
            loop.wait(timeout=30)
            engine.dispose()


def test_a_full_disk_publishes_nothing_and_the_old_bundle_keeps_serving(
    tiny_bundle: Path, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = preset("tiny")
    dataset = generate_synthetic(config.synthetic, seed=config.seed)
    paths = write_contract(dataset, tmp_path / "data")
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / tiny_bundle.name)
    point_current(root, tiny_bundle.name)
    old = load_bundle(root / "current")
    url = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    import_tables(url, paths["interactions"], paths["items"], paths["users"])
    engine = open_engine(url, 10.0)
    registry.register(
        engine, old.version, {"last": int(np.quantile(dataset.interactions.timestamp, 0.5))}, {}, "first", publish=True
    )

    # The bundles root fills up while the new bundle is being written there (its fourth array); the gate's
    # scratch bundle is written elsewhere and is not affected.
    real_array = BundleWriter.array
    written: list[str] = []

    def array_on_a_full_disk(self: BundleWriter, name: str, array: np.ndarray) -> None:
        if self.out_dir.resolve() == root.resolve():
            written.append(name)
            if len(written) >= 4:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp / name))
        real_array(self, name, array)

    monkeypatch.setattr(BundleWriter, "array", array_on_a_full_disk)
    update = {
        "bundle_path": root / "current",
        "bundles_root": root,
        "database_url": SecretStr(url),
        "bundle_sync_s": 0.2,
    }
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        user = old.user_ids[0]
        before = recommend(client, user)
        with pytest.raises(OSError, match="No space left"):
            retrain(url, root, config, margin=TINY_MARGIN)
        assert len(written) >= 4  # it did fail while writing into the root
        assert sorted(p.name for p in root.iterdir()) == sorted([old.version, "current"])  # nothing half-written
        assert (root / "current").resolve().name == old.version
        assert registry.published(engine).version == old.version  # type: ignore[union-attr]
        latest = registry.last_retrains(engine)[0]
        assert latest.result == "failed"
        assert "No space left" in latest.message
        time.sleep(0.6)  # a few sync rounds
        assert serving(client) == old.version
        assert recommend(client, user) == before
    engine.dispose()
