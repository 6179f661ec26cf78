"""Several server processes (RECO_WORKERS, `python -m service`): one view of the metrics, of items added live
and of the settings; what only one process would see is refused."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.core.bundle import load_bundle
from service.core.settings import Settings
from service.core.sockets import ReusePortSockets
from service.items.item_encoder import ItemEncoder
from service.items.live_items import ItemConflict, ItemRecord, LiveItems
from service.recommend.pipeline import Pipeline
from tests.conftest import REDIS_HOST, REDIS_PORT, free_port, redis_available


def test_several_workers_need_redis(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="RECO_WORKERS > 1 needs RECO_REDIS_URL"):
        Settings(bundle_path=tiny_bundle, dev_mode=True, workers=2)
    Settings(bundle_path=tiny_bundle, dev_mode=True, workers=2, redis_url="redis://127.0.0.1:6379/15")


def test_batch_loops_default_to_two_for_one_process_and_one_each_for_several(tiny_bundle: Path) -> None:
    base = {"bundle_path": tiny_bundle, "dev_mode": True, "redis_url": "redis://127.0.0.1:6379/15"}
    assert Settings(**base).batch_loops == 2
    assert Settings(**base, workers=2).batch_loops == 1
    assert Settings(**base, workers=2, batch_workers=3).batch_loops == 3
    assert Settings(**base, batch_workers=3, worker_threads=2).batch_loops == 2  # never more than the threads


def test_the_launcher_refuses_bad_settings_before_starting_anything(tiny_bundle: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env |= {"RECO_WORKERS": "2", "RECO_BUNDLE_PATH": str(tiny_bundle), "RECO_DEV_MODE": "true"}
    run = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "RECO_WORKERS > 1 needs RECO_REDIS_URL" in run.stderr
    assert "Traceback" not in run.stderr


def live_items(bundle_path: Path, delta: Path) -> LiveItems:
    bundle = load_bundle(bundle_path)
    pipeline = Pipeline.open(bundle, device="cpu")
    return LiveItems(pipeline, ItemEncoder(bundle, pipeline.onnx_providers, 1), delta)


def test_processes_sharing_the_live_items_file_see_each_others_items(tiny_bundle: Path, tmp_path: Path) -> None:
    delta = tmp_path / "live_items.jsonl"
    a, b = live_items(tiny_bundle, delta), live_items(tiny_bundle, delta)
    film = ItemRecord("new-film", "A new film", ["Drama"], 2026)
    assert a.upsert(film)
    assert b.behind()
    assert not a.behind()
    assert b.sync() == 1
    assert not b.behind()
    assert "new-film" in b._pipeline.bundle.item_index
    np.testing.assert_allclose(  # embedded by each process from the same content: the same vector
        b._pipeline.bundle.item_embeddings[-1], a._pipeline.bundle.item_embeddings[-1], atol=1e-5
    )
    assert not b.upsert(film)  # already there: unchanged
    # B is sent other content under the same id before it synced: it reads the file under the lock first.
    other = ItemRecord("other", "Other", ["Comedy"])
    assert a.upsert(other)
    with pytest.raises(ItemConflict):
        b.upsert(ItemRecord("other", "Something else"))
    assert b.upsert(ItemRecord("third", "Third"))
    assert a.sync() == 1  # third
    assert set(a._records) == set(b._records) == {"new-film", "other", "third"}
    lines = [json.loads(line)["item_id"] for line in delta.read_text().splitlines()]
    assert lines == ["new-film", "other", "third"]  # one line per item, in the order they were taken
    # A line still being written is read once complete.
    with delta.open("a") as f:
        f.write(json.dumps({"item_id": "fourth", "title": "Fourth"}))
    assert a.sync() == 0
    with delta.open("a") as f:
        f.write("\n")
    assert a.sync() == 1
    # A fresh process replays the whole file.
    assert live_items(tiny_bundle, delta).sync() == 4


def test_a_worker_that_died_leaves_no_live_gauges_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.core.metrics import Metrics

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, own = int(dead.stdout), os.getpid()
    for name in (f"gauge_livesum_{dead_pid}.db", f"gauge_livemin_{dead_pid}.db", f"counter_{dead_pid}.db"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f"gauge_livesum_{own}.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert Metrics().forget_dead_processes() == [dead_pid]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f"counter_{dead_pid}.db", f"gauge_livesum_{own}.db"]  # its counts stay: they happened


def scrape_by_process(metrics_dir: Path, tmp_path: Path) -> dict[int, str]:
    """Each worker's own samples: its files alone, aggregated by prometheus_client as the service would."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    pids = {int(m.group(1)) for p in metrics_dir.glob("counter_*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}
    for pid in pids:
        own = tmp_path / f"pid-{pid}"
        own.mkdir()
        for f in metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(f, own / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(own))  # type: ignore[no-untyped-call]
        out[pid] = generate_latest(registry).decode()
    return out


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in the scrape"
    return float(match.group(1))


def get(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, str]:
    """One request on a new connection (so the kernel hands it to either worker)."""
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def both_ready(url: str, metrics_dir: Path) -> bool:
    """Both workers have written their samples and the least of their reco_ready is 1."""
    if len(list(metrics_dir.glob("gauge_livemin_*.db"))) < 2:
        return False
    try:
        return "\nreco_ready 1.0\n" in get(url + "/metrics")[1]
    except OSError:  # not listening yet
        return False


@pytest.mark.skipif(not redis_available(), reason="needs the Redis server at 127.0.0.1:6379")
def test_each_worker_listens_on_its_own_socket_and_the_kernel_spreads_connections() -> None:
    parent = ReusePortSockets("127.0.0.1", 0)  # port 0: the parent's bind picks it
    # uvicorn's process manager pickles the list to each worker it starts; copy goes through the same __reduce__.
    workers = [copy.copy(parent) for _ in range(2)]
    try:
        assert parent.port > 0
        for w in workers:
            assert (len(w), w.port, w[0].getsockname()[1]) == (1, parent.port, parent.port)
            assert w[0].fileno() != parent[0].fileno()
            w[0].listen(64)
            w[0].setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", parent.port), timeout=5) for _ in range(40)]
        time.sleep(0.2)
        accepted = []
        for w in workers:
            n = 0
            while True:
                try:
                    conn, _ = w[0].accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            accepted.append(n)
        for c in clients:
            c.close()
        # Every connection reached a listening worker (none the parent's socket), and both got some: with
        # an even hash the chance that all 40 go to one is 2 ** -39.
        assert sum(accepted) == 40, accepted
        assert min(accepted) > 0, accepted
    finally:
        for s in [*parent, *workers[0], *workers[1]]:
            s.close()


@contextlib.contextmanager
def two_workers(tiny_bundle: Path, tmp_path: Path, **settings: str) -> Iterator[tuple[int, Path]]:
    """`python -m service` with RECO_WORKERS=2 (plus `settings`, RECO_ names), both workers ready: (port, the
    metrics directory); stopped by SIGTERM after, which must end it cleanly."""
    port, metrics_dir = free_port(), tmp_path / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")} | {
        "RECO_WORKERS": "2",
        "RECO_BUNDLE_PATH": str(tiny_bundle),
        "RECO_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/15",
        "RECO_DEV_MODE": "true",
        "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live_items.jsonl"),
        "RECO_DATABASE_URL": f"sqlite:///{tmp_path / 'reco.sqlite3'}",  # shared by the two workers
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **settings,
    }
    server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not both_ready(url, metrics_dir):
            assert server.poll() is None, f"the server exited with {server.returncode}"
            assert time.monotonic() < deadline, "two ready workers within 90 s"
            time.sleep(0.3)
        yield port, metrics_dir
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(60) == 0
        finally:
            if server.poll() is None:
                server.kill()


def test_two_workers_serve_as_one_service(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_1.db").write_bytes(b"stale")  # a previous run's file: emptied at start
    settings = {"RECO_NUM_CANDIDATES": "100", "RECO_LIVE_ITEMS_SYNC_S": "0.2"}
    with two_workers(tiny_bundle, tmp_path, **settings) as (port, metrics_dir):
        url = f"http://127.0.0.1:{port}"
        assert not (metrics_dir / "counter_1.db").exists()

        n = 60
        for user in range(n):
            status, body = get(url + "/v1/recommendations", json.dumps({"user_id": str(user + 1), "k": 5}).encode())
            assert status == 200, body
        route = 'reco_http_requests_total{method="POST",route="/v1/recommendations",status="200"}'
        per_process = {pid: sample(text, route) for pid, text in scrape_by_process(metrics_dir, tmp_path).items()}
        assert len(per_process) == 2
        assert all(v > 0 for v in per_process.values()), per_process  # the kernel spread the connections
        for _ in range(4):  # whichever process answers the scrape, it counts both
            scrape = get(url + "/metrics")[1]
            assert sample(scrape, route) == n
            assert sample(scrape, "reco_ready") == 1.0
            assert "reco_bundle_info{" in scrape

        body = json.dumps({"title": "A brand new film", "genres": ["Drama"]}).encode()
        assert get(url + "/v1/items/brand-new", body, "PUT")[0] == 200
        time.sleep(1.0)  # five sync periods
        statuses = [get(url + "/v1/items/brand-new/similar?k=3")[0] for _ in range(12)]
        assert statuses == [200] * 12  # both processes know it
        assert (
            sample(get(url + "/metrics")[1], "reco_index_items") == load_bundle(tiny_bundle).manifest.dims.n_items + 1
        )

        status, text = get(url + "/admin/reload", b"{}", "POST")
        assert status == 409
        assert "RECO_WORKERS=2" in text


def test_two_workers_on_one_shared_socket_when_reuse_port_is_off(tiny_bundle: Path, tmp_path: Path) -> None:
    """RECO_REUSE_PORT=false: uvicorn's one socket, shared by the workers (what SO_REUSEPORT was measured against)."""
    with two_workers(tiny_bundle, tmp_path, RECO_REUSE_PORT="false") as (port, _):
        for user in range(10):
            body = json.dumps({"user_id": str(user + 1), "k": 5}).encode()
            status, text = get(f"http://127.0.0.1:{port}/v1/recommendations", body)
            assert status == 200, text
        # One listening socket on the port (with SO_REUSEPORT each worker has its own: two).
        listening = [
            line
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
        ]
        assert len(listening) == 1, listening
