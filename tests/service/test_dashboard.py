"""The operators' dashboard in a real browser: Debian's chromium driven by Playwright against `uvicorn` serving
the test bundle with an admin token and API key set. The token is asked for once and kept for the session; each
page has its own link; a user's recommendations change after an event posted from the page; an item added from
the page is found; the bundle registry is listed. Screenshots go to $RECO_TEST_ARTIFACTS (default
test-artifacts/dashboard)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.core.bundle import load_bundle
from service.store import registry
from service.store.schema import migrate, open_engine
from tests.conftest import uvicorn_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ADMIN = "dashboard-admin-token-0123456789"
ARTIFACTS = Path(os.environ.get("RECO_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"

if os.environ.get("RECO_TEST_REQUIRE_BROWSER") == "1" and CHROMIUM is None:
    raise RuntimeError("RECO_TEST_REQUIRE_BROWSER=1 but chromium is not installed (apt: chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt: chromium)")


@pytest.fixture
def dashboard(tiny_bundle: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    database = f"sqlite:///{tmp_path / 'reco.sqlite3'}"
    migrate(database)
    engine = open_engine(database, 5.0)
    version = load_bundle(tiny_bundle).version
    window = {"first": 0, "last": 1, "events": 1, "users": 1, "items": 1}
    scores = {"candidate": {"ndcg@10": 0.21, "recall@10": 0.3, "users": 50}, "published": None}
    registry.register(engine, version, window, scores, "first", publish=True)
    engine.dispose()
    env = {
        "RECO_BUNDLE_PATH": str(tiny_bundle),
        "RECO_DATABASE_URL": database,
        "RECO_ADMIN_TOKEN": ADMIN,
        "RECO_API_KEY": "dashboard-client-key-0123456789",
        "RECO_LIVE_ITEMS_PATH": str(tmp_path / "live.jsonl"),
    }
    with uvicorn_server(env) as (url, _):
        yield url, load_bundle(tiny_bundle)


def test_every_page_works_in_a_real_browser(dashboard) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect, sync_playwright

    url, bundle = dashboard
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    user_id = bundle.user_ids[3]
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A shared link to a user page: the token is asked for first, then the page itself renders.
        page.goto(f"{url}/ui/users/{user_id}")
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token", "not-the-token")
        page.click("#token-form button")
        expect(page.locator("#message")).to_contain_text("refused")
        page.fill("#token", ADMIN)
        page.click("#token-form button")
        expect(page.locator("h1")).to_have_text(f"User {user_id}")
        expect(page.locator("#token-form")).to_be_hidden()
        assert ADMIN not in page.url  # never in a URL
        rows = page.locator("table").first.locator("tbody tr")
        expect(rows).to_have_count(10)
        before = rows.locator("td:nth-child(2)").all_inner_texts()
        assert "null" not in page.locator("#page").inner_text()
        page.screenshot(path=str(ARTIFACTS / "user.png"), full_page=True)

        # Dislike the top item from the page: the next recommendation (shown at once) no longer has it.
        rows.first.get_by_role("button", name="dislike").click()
        expect(page.locator("#message")).to_contain_text("Posted a dislike")
        after = page.locator("table").first.locator("tbody tr td:nth-child(2)").all_inner_texts()
        assert before[0] not in after
        assert after != before
        expect(page.get_by_text("Recent events (1)")).to_be_visible()

        # The token is kept for the session: the overview opens without asking again.
        page.click("header nav a[data-page=overview]")
        expect(page.locator("h1")).to_have_text("Overview")
        expect(page.locator(".cards")).to_contain_text(bundle.version)
        expect(page.get_by_text("Requests:")).to_be_visible(timeout=15_000)  # read from /metrics
        assert "NDCG@10" in page.locator("table").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

        # An item page (its own link), similar items, then an item added live from the form and found.
        item_id = bundle.item_ids[5]
        page.goto(f"{url}/ui/items/{item_id}")
        expect(page.locator("h1")).to_have_text(bundle.item_titles[5])
        expect(page.locator("table").first.locator("tbody tr")).to_have_count(10)
        page.screenshot(path=str(ARTIFACTS / "item.png"), full_page=True)
        page.fill("input[name=item_id]", "dashboard-new-item")
        page.fill("input[name=title]", "A film added from the dashboard")
        page.fill("input[name=genres]", "Drama, Comedy")
        page.fill("input[name=year]", "2021")
        page.click("text=Add item live")
        expect(page.locator("h1")).to_have_text("A film added from the dashboard")
        expect(page.locator(".cards")).to_contain_text("added live")
        expect(page.locator("table").first.locator("tbody tr")).to_have_count(10)  # its similar items
        assert page.url.endswith("/ui/items/dashboard-new-item")

        # The lookup pages open from their links too (a reload of /ui/users/ is a page, not a 404).
        page.goto(f"{url}/ui/users/")
        expect(page.locator("h1")).to_have_text("Users")
        page.fill("input[name=id]", user_id)
        page.click("text=Look up")
        expect(page.locator("h1")).to_have_text(f"User {user_id}")

        # The registry.
        page.click("header nav a[data-page=bundles]")
        expect(page.locator("h1")).to_have_text("Bundles")
        registry_table = page.locator("table").first
        expect(registry_table).to_contain_text(bundle.version)
        expect(registry_table).to_contain_text("published")
        expect(registry_table).to_contain_text("0.2100")
        page.screenshot(path=str(ARTIFACTS / "bundles.png"), full_page=True)
        expect(page.locator("#guard")).to_contain_text("Post-publish guard")

        # An experiment: created and started from the page, served, its results and curve on its own page.
        page.click("header nav a[data-page=experiments]")
        expect(page.locator("h1")).to_have_text("Experiments")
        page.fill("input[name=name]", "dash-exp")
        page.click("text=Create")
        expect(page.locator("table").first).to_contain_text("dash-exp")
        page.click("table button:text-is('start')")
        expect(page.locator("table").first).to_contain_text("running")
        for n in range(6):
            body, auth = {"user_id": f"dash-{n}", "k": 5}, {"Authorization": f"Bearer {ADMIN}"}
            assert page.request.post(f"{url}/v1/recommendations", data=body, headers=auth).ok
        page.wait_for_timeout(2000)  # the impressions are written off the response path, every second
        page.click("table a:text-is('dash-exp')")
        expect(page.locator("h1")).to_have_text("Experiment dash-exp (running)")
        expect(page.locator("table").first.locator("tbody tr")).to_have_count(2)
        expect(page.locator("svg.chart path")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "experiment.png"), full_page=True)

        # Errors are messages, never a blank page.
        page.goto(f"{url}/ui/items/no-such-item")
        expect(page.locator("#message")).to_contain_text("404")
        expect(page.locator("#page")).to_contain_text("Nothing to show")
        browser.close()
    assert not errors, errors
