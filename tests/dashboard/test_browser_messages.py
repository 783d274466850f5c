"""The message page in Debian's headless Chromium (as tests/dashboard/test_browser.py): a support person
pastes a number in their own notation into the main page's search box, opens a message from the results
and reads its timeline. docs/timeline.png is the screenshot of this run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from api.auth import ApiTokens
from bench.dashboard import serve
from shared.settings import Settings
from tests.dashboard.conftest import SECRET, combined_app
from tests.dashboard.test_browser import browser  # noqa: F401 (the fixture)
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post

pytestmark = pytest.mark.integration
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "timeline.png"


def test_search_a_number_and_open_a_message(browser: Any, settings: Settings, tokens: ApiTokens,  # noqa: F811
                                            ingress_client: TestClient, drain: Drain,
                                            clean: psycopg.Connection) -> None:
    for report in (gw_dlr("ENROUTE", 1_764_900_000), gw_dlr("DELIVERED", 1_764_900_090),
                   gw_dlr("BUFFERED", 1_764_899_990), gw_dlr("ENROUTE", 1_764_900_000),
                   {**gw_dlr("UNDELIVERABLE", 1_764_900_200, msg=1000002), "error": "Absent subscriber"}):
        post(ingress_client, "/webhooks/gatewayapi", report)
    drain()
    app, dash = combined_app(settings, tokens, cache_ttl_s={"flow": 0, "deliverability": 0, "consent": 0})
    problems: list[str] = []
    try:
        with serve(app) as base:
            page = browser.new_page(viewport={"width": 1360, "height": 700})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(base + "/login")
            page.fill("#token", SECRET)
            page.click("#login button")
            page.wait_for_url(base + "/")
            page.fill('nav input[name="q"]', "0045 87 65 43 21")
            page.press('nav input[name="q"]', "Enter")
            page.wait_for_selector(".message-results")
            refs = [a.inner_text() for a in page.query_selector_all(".message-results tbody a")]
            assert sorted(refs) == ["1000001", "1000002"]
            page.click(".message-results a:text('1000001')")
            page.wait_for_selector("#timeline")
            shown = [(tr.get_attribute("class"), tr.query_selector("strong").inner_text())
                     for tr in page.query_selector_all("#timeline tbody tr")]
            assert shown == [("superseded late", "queued"), ("superseded", "sent"), ("current", "delivered")]
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.close()
    finally:
        dash.close()
    assert problems == []
