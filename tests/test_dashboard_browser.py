"""The dashboard as a person sees it: headless Chromium (Debian's, driven by Playwright) on the page of a running
call, a call that failed and one that is done.

Skipped where Chromium or Playwright is missing, except in CI (CI=true), where it must run: there it fails instead.
With DASHBOARD_SCREENSHOT=docs/images/dashboard.png it also saves the screenshot the docs show.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import dashboard_tasks as dt
from parallelize import dashboard

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 15_000  # the longest any expectation waits for the page
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")


def _sync_playwright() -> Any:
    """Playwright's entry point, or a skip (a failure in CI) saying what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright for Python is not installed (pip install playwright; no `playwright install` needed)"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = "Chromium is not installed (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: CI must run the browser test (.ci/run installs both)")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sync_playwright = _sync_playwright()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    with sync_playwright() as playwright:
        # evil.example resolves to this machine, as a DNS-rebinding attacker's name would.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, timeout=WAIT_MS, args=[
            "--host-resolver-rules=MAP evil.example 127.0.0.1", "--no-proxy-server"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def board() -> Iterator[dashboard.Dashboard]:
    with dashboard.start() as started:
        yield started
    for func in (dt.checksum, dt.parse_record, dt.render_tile):
        func.close()


def test_the_page_shows_calls_live_with_their_failures_and_refuses_strangers(browser: Any,
                                                                             board: dashboard.Dashboard) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    dt.checksum(range(500))
    with pytest.raises(ValueError, match="malformed record 7"):
        dt.parse_record(range(12))
    dt.close_gates()

    def render_all() -> list[int]:
        return dt.render_tile(range(6))

    running = dt.in_background(render_all)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.set_default_timeout(WAIT_MS)
        assert page.goto(board.url).status == 200  # after the redirect that swaps the token for the cookie
        assert "token" not in page.url

        tile = page.locator(".call", has=page.locator(".name", has_text="render_tile"))
        expect(tile.locator(".badge")).to_have_text("running")
        expect(tile.locator(".count")).to_have_text("0/6 tasks (0%)")
        dt.open_gates(2)
        expect(tile.locator(".count")).to_have_text("2/6 tasks (33%)")  # live: no reload
        dt.open_gates(4)
        expect(tile.locator(".count")).to_have_text("4/6 tasks (66%)")
        expect(tile.locator(".eta")).to_contain_text("ETA")
        expect(tile.locator(".insights tbody tr")).to_have_count(2)

        failed = page.locator(".call", has=page.locator(".name", has_text="parse_record"))
        expect(failed.locator(".badge")).to_have_text("failed")
        expect(failed.locator(".error-title")).to_have_text("ValueError: malformed record 7: expected 3 fields, got 2")
        expect(failed.locator(".notes")).to_contain_text("called with 7")
        expect(failed.locator(".traceback")).to_contain_text("in parse_record")
        expect(failed.locator(".traceback")).to_contain_text('raise ValueError(f"malformed record {i}')
        done = page.locator(".call", has=page.locator(".name", has_text="checksum"))
        expect(done.locator(".count")).to_have_text("500/500 tasks (100%)")
        expect(done.locator(".site")).to_contain_text("dt.checksum(range(500))")
        expect(tile.locator(".site")).to_contain_text("test_dashboard_browser.py")
        if SCREENSHOT:
            page.locator(".call .insights summary").first.click()
            page.screenshot(path=SCREENSHOT, full_page=True)

        dt.open_gates(6)
        expect(tile.locator(".badge")).to_have_text("done")
        expect(tile.locator(".count")).to_have_text("6/6 tasks (100%)")
    finally:
        dt.open_gates(6)
    assert running.result(timeout=WAIT_MS / 1000) == list(range(6))

    stranger = browser.new_page()  # a browser without the cookie
    address = f"http://127.0.0.1:{board.port}/"
    refused = stranger.goto(address)
    assert refused.status == 403
    assert "token" in stranger.content()
    assert stranger.request.get(f"{address}api/calls").status == 403
    token = parse_qs(urlsplit(board.url).query)["token"][0]
    rebinding = stranger.goto(f"http://evil.example:{board.port}/?token={token}")  # even with the token
    assert rebinding.status == 403
    assert "Host is not allowed" in stranger.content()
    assert stranger.context.cookies() == []
