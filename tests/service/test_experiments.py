"""Online experiments: stable assignment by traffic share, exploration's propensities, the per-variant tests, the
impressions and attributed events in the system of record (SQLite and PostgreSQL), and the admin routes end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.settings import Settings
from service.experiments.design import Experiment, Variant, check_variants
from service.experiments.diversity import diversify
from service.experiments.exploration import Exposure, explore
from service.experiments.guard import compare
from service.experiments.results import always_valid, results
from service.store import experiments as store
from service.store.experiments import Impression, Shown
from service.store.records import NewEvent, Records
from service.store.schema import migrate
from tests.conftest import eventually
from tests.service.test_records import database  # noqa: F401  (the SQLite / PostgreSQL fixture)


def test_a_users_variant_is_stable_and_follows_the_shares() -> None:
    experiment = Experiment("e1", (Variant("a", 0.3), Variant("b", 0.7)))
    users = [f"user-{n}" for n in range(20_000)]
    first = [experiment.assign(u).name for u in users]
    assert first == [experiment.assign(u).name for u in users]  # stable
    assert abs(first.count("a") / len(users) - 0.3) < 0.015
    # Another experiment reshuffles users independently of this one.
    other = [Experiment("e2", experiment.variants).assign(u).name for u in users]
    both_a = sum(x == y == "a" for x, y in zip(first, other, strict=True)) / len(users)
    assert abs(both_a - 0.3 * 0.3) < 0.015


@pytest.mark.parametrize(
    ("variants", "problem"),
    [
        ([Variant("a", 1.0)], "at least two"),
        ([Variant("a", 0.5), Variant("a", 0.5)], "unique"),
        ([Variant("a", 0.5), Variant("b", 0.6)], "sum to 1"),
        ([Variant("a", 0.5), Variant("b", 0.5, exploration=0.9)], "exploration"),
        ([Variant("a", 0.5), Variant("b", 0.5, diversity=1.5)], "diversity"),
    ],
)
def test_a_wrong_split_is_named(variants: list[Variant], problem: str) -> None:
    found = check_variants(variants)
    assert found is not None
    assert problem in found


def test_exploration_takes_a_bounded_share_of_slots_and_logs_their_propensities() -> None:
    ranked = [f"i{n}" for n in range(60)]
    rng = np.random.default_rng(0)
    kept = explore(ranked, 10, 0.0, Exposure(), rng)
    assert kept.order.tolist() == list(range(10))
    assert not kept.explored.any()
    assert np.allclose(kept.propensities, 1.0)
    shown = Exposure()
    shown.add([f"i{n}" for n in range(10, 59)] * 1000)  # every pool item shown often but the last
    explored, exploring, rare = 0, 0, 0
    for _ in range(400):
        out = explore(ranked, 10, 0.2, shown, rng)
        e = out.explored
        explored += int(e.sum())
        exploring += bool(e.any())
        rare += bool((out.order[e] == 59).any())
        # Exploited slots keep the model's order; explored ones come from the pool only.
        assert (np.diff(out.order[~e]) > 0).all()
        assert (out.order[e] >= 10).all()
        assert np.allclose(out.propensities[~e], 0.8)
        assert (out.propensities[e] < 0.2).all()
    assert abs(explored / 4000 - 0.2) < 0.03  # the share asked for
    # The item shown rarely is in nearly every list that explores (1 in 50 by rank alone).
    assert rare / exploring > 0.9
    # Items the bundle never trained on (added live) are drawn first while the pool holds any.
    untrained = [n >= 55 for n in range(60)]
    for _ in range(50):
        out = explore(ranked, 10, 0.5, Exposure(), rng, untrained)
        picked = out.order[out.explored]
        assert (picked[: min(len(picked), 5)] >= 55).all()
        if len(picked):
            assert out.propensities[out.explored][0] == pytest.approx(0.5 / 5)  # one of the five, equal weights
    # Shown and clicked often weighs more than never shown, which weighs more than shown often and never clicked.
    exposure = Exposure()
    exposure.add(["hit"] * 100 + ["miss"] * 100)
    for _ in range(60):
        exposure.click("hit")
    assert exposure.weight("hit") > exposure.weight("new") == 0.5 > exposure.weight("miss")


def test_a_diversity_weight_trades_rank_for_dissimilarity() -> None:
    """Items 0-2 are near copies of one another, 3 and 4 point elsewhere: with weight, the second slot goes to the
    best item unlike the first; without, the ranking stays."""
    scores = np.array([1.0, 0.95, 0.9, 0.8, 0.7, np.nan])  # (a missing score ranks last)
    embeddings = np.array(
        [[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]], dtype=np.float32
    )
    assert diversify(scores, embeddings, 3, 0.0).tolist() == list(range(6))
    order = diversify(scores, embeddings, 3, 0.5)
    assert order[:3].tolist() == [0, 3, 4]
    assert sorted(order.tolist()) == list(range(6))  # every candidate once: the rest after, as ranked
    assert order[3:].tolist() == [1, 2, 5]


def _lists(variant: str, n: int, clicked: int, start: float = 0.0) -> list[Shown]:
    return [
        Shown(f"{variant}-{j}", variant, "v1", ["x", "y"], start + j, [("x", "click")] if j < clicked else [])
        for j in range(n)
    ]


def test_the_tests_tell_a_real_difference_from_none() -> None:
    same = results(_lists("a", 2000, 200) + _lists("b", 2000, 204), ["a", "b"], k=10, n_items=10, bucket_s=500)
    versus = same["variants"]["b"]["against_control"]["ctr"]
    assert not versus["significant"]
    assert versus["p_value"] > 0.5
    low, high = versus["interval"]
    assert low < 0.002 < high
    better = results(_lists("a", 2000, 200) + _lists("b", 2000, 300), ["a", "b"], k=10, n_items=10, bucket_s=500)
    versus = better["variants"]["b"]["against_control"]["ctr"]
    assert versus["significant"]
    assert versus["p_value"] < 1e-4
    assert versus["difference"] == pytest.approx(0.05)
    assert versus["always_valid_interval"][0] > 0
    assert better["variants"]["b"]["ctr"] == pytest.approx(0.15)
    assert better["variants"]["a"]["lists"] == 2000
    assert len(better["series"]) == 4  # 2000 s of lists in 500 s buckets
    # The always-valid interval is wider than the fixed-horizon one: the price of reading it at any time.
    av_low, av_high = versus["always_valid_interval"]
    assert av_high - av_low > versus["interval"][1] - versus["interval"][0]
    assert always_valid(0, 0, 0, 0)[0] == 1.0


def test_impressions_and_attributed_events_are_stored_and_read_back(database: str) -> None:  # noqa: F811
    migrate(database)
    records = Records(database, timeout_s=2, threads=2, recent=5)
    try:
        row = store.create(records.engine, "e", [Variant("a", 0.5).spec(), Variant("b", 0.5).spec()])
        with pytest.raises(store.ExperimentConflict):
            store.create(records.engine, "e", row.variants)
        store.start(records.engine, "e")
        store.create(records.engine, "f", row.variants)
        with pytest.raises(store.ExperimentConflict, match="running"):
            store.start(records.engine, "f")
        now = time.time()
        batch = [
            Impression("r1", "u1", "v1", "e", "a", ["i1", "i2"], None, now),
            Impression("r2", "u2", "v1", "e", "b", ["i3"], [0.8], now + 1),
            Impression("r1", "u1", "v1", "e", "a", ["i9"], None, now + 2),  # a repeated request id
        ]
        assert store.store_impressions(records.engine, batch) == (2, 1)
        records.append([NewEvent("u1", "i2", "click", None, request_id="r1"), NewEvent("u2", "i3", "like", None)])
        shown = store.shown(records.engine, experiment="e")
        assert [(s.request_id, s.items, s.events) for s in shown] == [
            ("r1", ["i1", "i2"], [("i2", "click")]),
            ("r2", ["i3"], []),  # an event without a request id is not attributed
        ]
        assert store.running(records.engine).name == "e"  # type: ignore[union-attr]
        assert store.stop(records.engine, "e").status == "stopped"
        assert store.running(records.engine) is None
        assert store.impressions_of(records.engine, "u1") == 1
        records.delete_user("u1")  # the lists shown to a deleted user go with them
        assert store.impressions_of(records.engine, "u1") == 0
    finally:
        records.close()


def post(client: TestClient, path: str, body: object = None) -> dict:  # type: ignore[type-arg]
    response = client.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def test_an_experiment_end_to_end(settings: Settings, tiny_bundle: Path) -> None:
    """Created, started, served (the popular variant its own ordering), its lists and attributed clicks counted
    per variant, results and metrics read, stopped."""
    settings = settings.model_copy(update={"experiments_sync_s": 0.2})
    with TestClient(create_app(settings)) as client:
        spec = {
            "name": "pop-vs-model",
            "variants": [
                {"name": "popular", "share": 0.2, "ordering": "popular"},  # relative shares: half each
                {"name": "model", "share": 0.2, "exploration": 0.3},
            ],
        }
        bad = client.post("/admin/experiments", json={**spec, "variants": spec["variants"][:1]})
        assert bad.status_code == 422
        assert "variants" in bad.text
        twins = [{"name": "a", "share": 0.2}, {"name": "a", "share": 0.2}]
        assert client.post("/admin/experiments", json={"name": "x", "variants": twins}).status_code == 409
        created = post(client, "/admin/experiments", spec)
        assert created["status"] == "created"
        assert [v["share"] for v in created["variants"]] == [0.5, 0.5]
        assert client.post("/admin/experiments", json=spec).status_code == 409
        assert client.post("/admin/experiments/nope/start").status_code == 404
        assert post(client, "/admin/experiments/pop-vs-model/start")["status"] == "running"
        state = client.app.state.reco  # type: ignore[attr-defined]
        popular_first = state.bundle.item_ids[int(np.argmax(state.bundle.item_log_popularity))]
        served: dict[str, list[str]] = {}
        for n in range(40):
            user = f"visitor-{n}"  # unknown users: nothing seen, so the popular list starts with the most popular
            answer = post(client, "/v1/recommendations", {"user_id": user, "k": 5})
            variant = Experiment.of(store.get(state.records.engine, "pop-vs-model")).assign(user).name  # type: ignore[arg-type]
            items = [i["item_id"] for i in answer["items"]]
            served.setdefault(variant, []).append(items[0])
            post(
                client,
                "/v1/events",
                {
                    "events": [
                        {
                            "user_id": user,
                            "item_id": items[0],
                            "event_type": "click",
                            "request_id": answer["request_id"],
                        }
                    ]
                },
            )
        assert set(served) == {"popular", "model"}
        assert set(served["popular"]) == {popular_first}
        assert eventually(lambda: store.impressions_of(state.records.engine, "visitor-39") == 1)
        found = client.get("/admin/experiments/pop-vs-model/results", params={"k": 5}).json()
        for name, firsts in served.items():
            tally = found["variants"][name]
            assert tally["lists"] == len(firsts)
            assert tally["ctr"] == 1.0
        assert "against_control" in found["variants"]["model"]
        metrics = client.get("/metrics").text
        assert (
            f'reco_experiment_lists_total{{experiment="pop-vs-model",variant="popular"}} {len(served["popular"])}.0'
            in metrics
        )
        assert 'reco_experiment_events_total{event_type="click",experiment="pop-vs-model",variant="model"}' in metrics
        assert post(client, "/admin/experiments/pop-vs-model/stop")["status"] == "stopped"
        assert client.post("/admin/experiments/pop-vs-model/stop").status_code == 409
        listed = client.get("/admin/experiments").json()
        assert [e["name"] for e in listed] == ["pop-vs-model"]
        guard = client.get("/admin/guard").json()
        assert guard["regression"] is False
        assert guard["previous"] is None


def test_the_guard_flags_a_bundle_whose_live_ctr_fell(database: str) -> None:  # noqa: F811
    """Counted in the database per bundle and hour: the old bundle's lists clicked 30 %, the new one's 10 %."""
    migrate(database)
    records = Records(database, timeout_s=5, threads=2, recent=5)
    try:
        engine, now = records.engine, time.time()
        assert compare(engine, "v1", min_lists=100)["reason"] == "no lists of both bundles recorded yet"
        clicks = []
        for version, start, rate in (("v1", now - 7200, 0.3), ("v2", now - 3600, 0.1)):
            shown = [
                Impression(f"{version}-{j}", f"u{j}", version, None, None, ["a", "b"], None, start + j)
                for j in range(1500)
            ]
            store.store_impressions(engine, shown)
            clicks += [
                NewEvent(f"u{j}", "b", "click", None, request_id=f"{version}-{j}") for j in range(int(rate * 1500))
            ]
        for at in range(0, len(clicks), 200):
            records.append(clicks[at : at + 200])
        verdict = compare(engine, "v2", min_lists=1000)
        assert verdict["previous"] == "v1"
        assert verdict["bundles"]["v1"] == {"lists": 1500, "clicked_lists": 450, "ctr": 0.3}
        assert verdict["regression"]
        assert verdict["interval"][1] < 0
        assert not compare(engine, "v2", min_lists=2000)["regression"]  # not enough lists yet
        assert not compare(engine, "v1", min_lists=1000)["regression"]  # v1 has no bundle before it
    finally:
        records.close()


def test_a_variant_serves_its_own_bundle_beside_the_published_one(
    settings: Settings, tiny_bundle: Path, second_bundle: Path, tmp_path: Path
) -> None:
    """A variant naming another bundle version: checked on disk when created, opened in every process when the
    experiment starts, its users served (and their lists recorded) from it, with its diversity weight; closed when
    the experiment stops. A variant whose bundle does not load is served the published bundle outside the
    experiment, never counted for it."""
    root = tmp_path / "bundles"
    root.mkdir()
    for bundle in (tiny_bundle, second_bundle):
        (root / bundle.name).symlink_to(bundle)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{}")
    published, candidate = tiny_bundle.name, second_bundle.name
    settings = settings.model_copy(update={"bundles_root": root, "bundle_path": root / published})
    with TestClient(create_app(settings)) as client:
        state = client.app.state.reco  # type: ignore[attr-defined]
        missing = {"name": "x", "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "bundle": "v0"}]}
        answer = client.post("/admin/experiments", json=missing)
        assert answer.status_code == 404
        assert "body.variants.1.bundle" in answer.text
        variants = [{"name": "published", "share": 0.5}, {"name": "candidate", "share": 0.5, "bundle": candidate}]
        variants[1]["diversity"] = 0.5
        post(client, "/admin/experiments", {"name": "bundles", "variants": variants})
        post(client, "/admin/experiments/bundles/start")
        assert set(state.variants.servings) == {candidate}
        experiment = Experiment.of(store.get(state.records.engine, "bundles"))  # type: ignore[arg-type]
        served: dict[str, set[str]] = {}
        for n in range(30):
            user = str(1 + n)
            answer = post(client, "/v1/recommendations", {"user_id": user, "k": 10})
            served.setdefault(experiment.assign(user).name, set()).add(answer["bundle_version"])
            assert len({i["item_id"] for i in answer["items"]}) == 10
        assert served == {"published": {published}, "candidate": {candidate}}
        assert eventually(lambda: store.impressions_of(state.records.engine, "30") == 1)
        recorded = store.shown(state.records.engine, experiment="bundles")
        assert {(s.variant, s.bundle_version) for s in recorded} == {("published", published), ("candidate", candidate)}
        post(client, "/admin/experiments/bundles/stop")
        assert state.variants.servings == {}

        broken = [{"name": "published", "share": 0.5}, {"name": "broken", "share": 0.5, "bundle": "broken"}]
        post(client, "/admin/experiments", {"name": "broken", "variants": broken})
        post(client, "/admin/experiments/broken/start")  # the experiment runs; the bundle is refused, not served
        assert state.variants.refused == {"broken"}
        experiment = Experiment.of(store.get(state.records.engine, "broken"))  # type: ignore[arg-type]
        users = [str(1 + n) for n in range(30)]
        outside = [u for u in users if experiment.assign(u).name == "broken"]
        for user in users:
            assert post(client, "/v1/recommendations", {"user_id": user, "k": 5})["bundle_version"] == published
        assert eventually(lambda: all(store.impressions_of(state.records.engine, u) == 2 for u in users))
        counted = store.shown(state.records.engine, experiment="broken")
        assert {s.variant for s in counted} == {"published"}
        assert len(counted) == len(users) - len(outside)
        assert 'reco_bundle_reloads_total{result="refused"} 1.0' in client.get("/metrics").text
