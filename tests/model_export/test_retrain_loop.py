"""The loop closed, end to end (issue 21): a dataset imported into PostgreSQL, retrained into a published bundle;
two service processes following the registry; events (a brand-new user's among them) and a new item arriving
through the API; retrained again: both processes switch with traffic running and no failed request, and the new
bundle knows the user and the item. A deliberately worse candidate is rejected (nothing changes); a rollback
moves both processes back. Plus the registry's own rules, on SQLite."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model_export.bundle import point_current
from model_export.config import preset
from model_export.contract import write_contract
from model_export.data import Dataset, generate_synthetic
from model_export.database import import_tables
from model_export.retrain import retrain
from service.core.bundle import load_bundle
from service.store import registry
from service.store.schema import migrate, open_engine
from tests.conftest import TINY_MARGIN, uvicorn_server
from tests.service.test_records import needs_postgres

SYNC_S = 0.5


def request(url: str, method: str = "GET", body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def served(url: str) -> str | None:
    return request(url + "/readyz")[1].get("bundle_version")


def wait_for(urls: list[str], version: str, timeout_s: float = 90) -> float:
    """Seconds until every process serves `version`."""
    t0 = time.monotonic()
    while any(served(u) != version for u in urls):
        assert time.monotonic() - t0 < timeout_s, [served(u) for u in urls]
        time.sleep(0.1)
    return time.monotonic() - t0


def fallback_count(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('reco_fallbacks_total{reason="unknown_user"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def event_bodies(dataset: Dataset, rows: np.ndarray, config_min_rating: float) -> list[dict]:
    x = dataset.interactions
    events = [
        {
            "user_id": dataset.user_ids[int(x.user[r])],
            "item_id": dataset.item_ids[int(x.item[r])],
            "event_type": "like" if x.rating[r] >= config_min_rating else "dislike",
            "timestamp": float(x.timestamp[r]),
            "event_id": f"replay-{r}",
        }
        for r in rows
    ]
    return [{"events": events[n : n + 80]} for n in range(0, len(events), 80)]


class Traffic:
    """Recommendation requests round-robin over the processes until stopped; every status kept."""

    def __init__(self, urls: list[str], users: list[str]) -> None:
        self.urls, self.users, self.statuses = urls, users, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            url = self.urls[n % len(self.urls)]
            status, _ = request(
                url + "/v1/recommendations", "POST", {"user_id": self.users[n % len(self.users)], "k": 5}
            )
            self.statuses.append(status)
            n += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@needs_postgres
@pytest.mark.slow
def test_retrain_publishes_to_every_replica_rejects_a_worse_model_and_rolls_back(tmp_path: Path) -> None:
    from benchmarks.ingest import fresh_postgres

    config = preset("tiny")
    dataset = generate_synthetic(config.synthetic, seed=config.seed)
    x = dataset.interactions
    first_cut, second_cut = np.quantile(x.timestamp, [0.8, 0.9])
    early = replace(dataset, interactions=x.take(np.flatnonzero(x.timestamp < first_cut)))
    paths = write_contract(early, tmp_path / "data")
    bundles = tmp_path / "bundles"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres())
        import_tables(url, paths["interactions"], paths["items"], paths["users"])
        first = retrain(url, bundles, config)
        assert first.result == "published"
        assert first.published is None  # nothing to compare with: the first bundle passes
        env = {
            "RECO_BUNDLE_PATH": str(bundles / "current"),
            "RECO_BUNDLES_ROOT": str(bundles),
            "RECO_DATABASE_URL": url,
            "RECO_BUNDLE_SYNC_S": str(SYNC_S),
            "RECO_DEV_MODE": "true",
        }
        a, _ = stack.enter_context(uvicorn_server(env))
        b, _ = stack.enter_context(uvicorn_server(env))
        urls = [a, b]
        assert [served(u) for u in urls] == [first.version] * 2
        traffic = stack.enter_context(Traffic(urls, dataset.user_ids[:50]))

        # What happens between two retrains: the next tenth of the log, a brand-new user, a new item.
        middle = np.flatnonzero((x.timestamp >= first_cut) & (x.timestamp < second_cut))
        for body in event_bodies(dataset, middle, config.min_rating):
            assert request(a + "/v1/events", "POST", body)[0] == 200
        new_user = [
            {
                "user_id": "e2e-new-user",
                "item_id": dataset.item_ids[i],
                "event_type": "like",
                "timestamp": second_cut - i,
            }
            for i in range(5)
        ]  # event times in the log's own range: the gate holds out by event time
        assert request(b + "/v1/events", "POST", {"events": new_user})[0] == 200
        item = {"title": "An item added live", "genres": ["Drama"], "year": 2020}
        assert request(b + "/v1/items/e2e-new-item", "PUT", item)[0] == 200

        second = retrain(url, bundles, config, margin=TINY_MARGIN)
        assert second.result == "published", second
        assert second.published is not None  # judged against the first, on the events since
        switched = wait_for(urls, second.version)
        bundle = load_bundle(bundles / second.version)
        assert "e2e-new-user" in bundle.user_index  # learnt from the events posted
        assert "e2e-new-item" in bundle.item_index
        assert bundle.item_index["e2e-new-item"] < bundle.manifest.dims.n_items  # a trained item now
        before = fallback_count(a)
        assert request(a + "/v1/recommendations", "POST", {"user_id": "e2e-new-user", "k": 5})[0] == 200
        assert fallback_count(a) == before  # no unknown-user fallback: the bundle knows them

        # A worse model (every interaction on a random item) on the last tenth: rejected, nothing moves.
        last = np.flatnonzero(x.timestamp >= second_cut)
        for body in event_bodies(dataset, last, config.min_rating):
            assert request(b + "/v1/events", "POST", body)[0] == 200
        rng = np.random.default_rng(0)

        def scrambled(d: Dataset) -> Dataset:
            i = d.interactions
            return replace(d, interactions=replace(i, item=rng.integers(0, len(d.item_ids), len(i))))

        # No margin: the gate's few users (the last tenth of a 300-user log) leave a wide interval; worse with
        # confidence at all is enough here.
        worse = retrain(url, bundles, config, margin=0.0, training_data=scrambled)
        assert worse.result == "rejected", (worse.candidate, worse.published, worse.message)
        time.sleep(4 * SYNC_S)
        assert [served(u) for u in urls] == [second.version] * 2
        assert (bundles / "current").resolve().name == second.version
        engine = open_engine(url, 10.0)
        try:
            statuses = {e.version: (e.status, e.gate) for e in registry.entries(engine)}
            assert statuses == {
                first.version: ("retired", "first"),
                second.version: ("published", "passed"),
                worse.version: ("rejected", "failed"),
            }
            old, now = registry.rollback(engine)
            point_current(bundles, now.version)
            assert (old.version, now.version) == (second.version, first.version)
            rolled = wait_for(urls, first.version)
            assert [r.result for r in registry.last_retrains(engine)] == ["rejected", "published", "published"]
        finally:
            engine.dispose()
        traffic.__exit__()
        print(f"publish: every process switched in {switched:.2f} s; rollback in {rolled:.2f} s (sync {SYNC_S} s)")
    assert len(traffic.statuses) > 50
    assert set(traffic.statuses) == {200}, {s: traffic.statuses.count(s) for s in set(traffic.statuses)}


def test_the_registry_publishes_one_bundle_at_a_time_and_guards_the_gate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    migrate(url)
    engine = open_engine(url, 5.0)
    try:
        window = {"first": 0, "last": 10, "events": 5, "users": 2, "items": 3}
        registry.register(engine, "v1", window, {}, "first", publish=True)
        registry.register(engine, "v2", window, {}, "passed", publish=True)
        registry.register(engine, "v3", window, {}, "failed", publish=False)
        assert registry.published(engine).version == "v2"  # type: ignore[union-attr]
        with pytest.raises(registry.RegistryError, match="failed the quality gate"):
            registry.publish(engine, "v3")
        with pytest.raises(registry.RegistryError, match="no bundle 'v9'"):
            registry.publish(engine, "v9")
        assert registry.publish(engine, "v3", override_gate=True).version == "v2"  # type: ignore[union-attr]
        statuses = {e.version: (e.status, e.gate) for e in registry.entries(engine)}
        assert statuses == {"v1": ("retired", "first"), "v2": ("retired", "passed"), "v3": ("published", "overridden")}
        old, now = registry.rollback(engine)
        assert (old.version, now.version) == ("v3", "v2")  # the one published last before it
        old, now = registry.rollback(engine)
        assert (old.version, now.version) == ("v2", "v1")
        with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
            registry.rollback(engine)
        assert [e.status for e in registry.entries(engine)].count("published") == 1
    finally:
        engine.dispose()


def test_the_registry_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_export.__main__ import main

    url = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    bundles = tmp_path / "bundles"
    for version in ("v1", "v2"):
        (bundles / version).mkdir(parents=True)
    migrate(url)
    engine = open_engine(url, 5.0)
    window = {"first": 0, "last": 10, "events": 5, "users": 2, "items": 3}
    registry.register(engine, "v1", window, {"candidate": {"ndcg@10": 0.2}}, "first", publish=True)
    registry.register(
        engine, "v2", window, {"candidate": {"ndcg@10": 0.1}, "published": {"ndcg@10": 0.2}}, "failed", publish=False
    )
    engine.dispose()
    assert main(["publish", "v2", "--database", url, "--bundles", str(bundles)]) == 2
    assert "failed the quality gate" in capsys.readouterr().err
    assert main(["publish", "v2", "--database", url, "--bundles", str(bundles), "--override-gate"]) == 0
    assert (bundles / "current").resolve().name == "v2"
    capsys.readouterr()
    assert main(["bundles", "--database", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(b["version"], b["status"], b["gate"]) for b in listed["bundles"]] == [
        ("v2", "published", "overridden"),
        ("v1", "retired", "first"),
    ]
    assert main(["rollback", "--database", url, "--bundles", str(bundles)]) == 0
    assert (bundles / "current").resolve().name == "v1"
    assert main(["bundles", "--database", url]) == 0
    table = capsys.readouterr().out
    assert "rolled_back" in table
    assert "0.1000" in table
