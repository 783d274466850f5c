"""The dashboard in Debian's headless Chromium (Playwright driving /usr/bin/chromium), against a pipeline
started here: traffic through the ingress, the dispatcher and RQ workers into real Postgres and Redis, the
API app with the dashboard served by uvicorn on a free port. What the page shows is compared with Postgres,
Redis and `hookstream status --json`; one review item is decided through the page; docs/dashboard.png is
the screenshot of this run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from playwright.sync_api import expect, sync_playwright
from starlette.testclient import TestClient

from api.auth import ApiTokens
from bench.dashboard import serve
from shared.settings import Settings
from tests.dashboard.conftest import SECRET, combined_app, send_traffic
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import cm_mo, post, rows

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
INGRESS_PORT = 8000  # what the empty state's curl names; the test's ingress is in-process


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs the Debian package chromium")
        pytest.skip(f"{CHROMIUM} is not installed here (apt-get install -y chromium); CI installs it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def status_json(settings: Settings) -> dict[str, Any]:
    """The operator's command, as a process of its own."""
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": settings.redis_url or "",
           "HOOKSTREAM_DATABASE_URL": settings.database_url or "", "HOOKSTREAM_LOG_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, "-m", "hookstream.cli", "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@contextmanager
def worker_process(settings: Settings) -> Iterator[None]:
    """`hookstream worker` as deployed, registered in RQ while the block runs; stopped (and
    unregistered) after it."""
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": settings.redis_url or "",
           "HOOKSTREAM_DATABASE_URL": settings.database_url or "", "HOOKSTREAM_WORKER_METRICS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def number(text: str) -> int:
    return int(text.strip().replace(",", ""))


def test_the_page_shows_what_postgres_and_redis_hold(
        browser: Any, settings: Settings, tokens: ApiTokens, ingress_client: TestClient, drain: Drain,
        db: psycopg.Connection, redis_client: redis.Redis, clean: psycopg.Connection) -> None:
    send_traffic(ingress_client, drain)
    app, dash = combined_app(settings, tokens, cache_ttl_s={"flow": 0, "deliverability": 0, "consent": 0},
                             ingress_port=INGRESS_PORT, refresh_s=1)
    problems: list[str] = []
    try:
        with serve(app) as base:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            # Logging in through the form.
            page.goto(base + "/")
            assert page.url == base + "/login"
            page.fill("#token", "wrong-token")
            page.click("#login button")
            assert "not one of HOOKSTREAM_API_TOKENS" in page.inner_text(".error")
            assert [p for p in problems if "status of 401" not in p] == []  # the refused login is a 401
            problems.clear()
            page.fill("#token", SECRET)
            page.click("#login button")
            page.wait_for_url(base + "/")
            page.wait_for_selector("#flow .chart svg rect")
            cookie = next(c for c in page.context.cookies() if c["name"] == "hookstream_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

            # Flow: the operational numbers are `hookstream status --json`'s.
            report = status_json(settings)
            assert report["errors"] == []
            for key in ("lag", "pending", "queue_depth", "replay_queue_depth", "workers", "failed_jobs", "dead_letters",
                        "stream_length"):
                shown = page.inner_text(f'[data-status="{key}"] dd')
                assert number(shown) == report[key], (key, shown, report[key])
            assert report["stream_length"] == redis_client.xlen(settings.stream) == 15
            rates = {el.get_attribute("data-provider"): float(el.get_attribute("data-rate"))
                     for el in page.query_selector_all("#events-per-minute .rate")}
            assert rates == report["events_per_minute"]

            # Flow: the chart's bars are Postgres's rows per minute, provider and outcome.
            expected: Counter[tuple[str, str, str]] = Counter()
            for r in rows(db, "SELECT provider, kind, date_trunc('minute', received_at) AS m, count(*) AS n"
                              " FROM events GROUP BY 1, 2, 3"):
                expected[(r["provider"], r["kind"], r["m"].isoformat())] += r["n"]
            for r in rows(db, "SELECT provider, date_trunc('minute', coalesce(received_at, first_seen)) AS m,"
                              " count(*) AS n FROM dead_letters WHERE requeued_at IS NULL GROUP BY 1, 2"):
                expected[(r["provider"], "dead_letter", r["m"].isoformat())] += r["n"]
            drawn: Counter[tuple[str, str, str]] = Counter()
            for figure in page.query_selector_all("#flow figure"):
                provider = figure.query_selector("figcaption").inner_text().strip()
                for rect in figure.query_selector_all("rect[data-series]"):
                    drawn[(provider, rect.get_attribute("data-series"), rect.get_attribute("data-label"))] += int(
                        rect.get_attribute("data-value"))
            assert drawn == expected
            table = {(tr.get_attribute("data-provider"), tr.get_attribute("data-outcome")):
                     number(tr.query_selector(".total").inner_text())
                     for tr in page.query_selector_all("#flow-table tbody tr")}
            assert table == {(p, o): 0 for p, o, _ in expected} | {
                (p, o): sum(n for (p2, o2, _), n in expected.items() if (p2, o2) == (p, o)) for p, o, _ in expected}
            (reason,) = page.query_selector_all("#dead-letter-reasons tbody tr")
            (letter,) = rows(db, "SELECT id, reason FROM dead_letters")
            assert reason.get_attribute("data-id") == str(letter["id"]) and letter["reason"][:60] in reason.inner_text()

            # Deliverability: the table is deliverability_daily summed per provider and per sender.
            view = rows(db, "SELECT provider, sender, sum(delivered) AS delivered, sum(failed) AS failed,"
                            " sum(expired) AS expired, sum(rejected) AS rejected, sum(total) AS total"
                            " FROM deliverability_daily GROUP BY ROLLUP (provider, sender)")
            for r in view:
                if r["provider"] is None:
                    continue
                where = (f'#deliverability-providers tr[data-provider="{r["provider"]}"]' if r["sender"] is None else
                         f'#deliverability-senders tr[data-provider="{r["provider"]}"][data-sender="{r["sender"]}"]')
                for key in ("delivered", "failed", "expired", "rejected", "total"):
                    assert number(page.inner_text(f'{where} [data-key="{key}"]')) == r[key], (where, key)
            bars = Counter()
            for rect in page.query_selector_all("#deliverability rect[data-series]"):
                bars[rect.get_attribute("data-series")] += int(rect.get_attribute("data-value"))
            totals = next(r for r in view if r["provider"] is None)
            assert bars == {k: totals[k] for k in ("delivered", "failed", "expired", "rejected") if totals[k]}

            # Consent: the counts per day and the review queue.
            changes = Counter({r["new_state"]: r["n"] for r in rows(
                db, "SELECT new_state, count(*) AS n FROM consent_changes GROUP BY 1")})
            assert number(page.inner_text('#consent-totals [data-key="opt_outs"]')) == changes["opted_out"] == 1
            assert number(page.inner_text('#consent-totals [data-key="opt_ins"]')) == changes["opted_in"] == 1
            queue = [r["event_key"] for r in rows(db, "SELECT event_key FROM consent_review ORDER BY id")]
            shown_queue = [tr.get_attribute("data-event-id")
                           for tr in page.query_selector_all("#review-queue tbody tr")]
            assert shown_queue == queue and len(queue) == 2
            assert number(page.inner_text("#review [data-count]")) == 2

            # The page refreshes itself: a new reply appears without reloading.
            before = number(page.inner_text('#flow-table tr[data-provider="cm"][data-outcome="inbound"] .total'))
            post(ingress_client, "/webhooks/cm/mo", cm_mo("see you", sender="+31612345699", ref="late"))
            drain()
            expect(page.locator('#flow-table tr[data-provider="cm"][data-outcome="inbound"] .total')).to_have_text(
                str(before + 1), timeout=10_000)

            # Deciding one review item through the page: the API's route semantics, audited under the label.
            first = queue[0]
            (item,) = rows(db, "SELECT subject, scope FROM consent_review WHERE event_key = %s", first)
            page.click(f'#review-queue tr[data-event-id="{first}"] button[value="opt_out"]')
            page.wait_for_selector("#decision-result:not([hidden])")
            assert "Opted out" in page.inner_text("#decision-result")
            expect(page.locator(f'#review-queue tr[data-event-id="{first}"]')).to_have_count(0, timeout=10_000)
            (audit,) = rows(db, "SELECT subject, scope, old_state, new_state, outcome, decided_by FROM consent_changes"
                                " WHERE event_key = %s", first)
            assert audit == {"subject": item["subject"], "scope": item["scope"], "old_state": None,
                             "new_state": "opted_out", "outcome": "opt_out", "decided_by": "ops"}
            assert rows(db, "SELECT decision, decided_by FROM review_decisions WHERE event_key = %s", first) == [
                {"decision": "opt_out", "decided_by": "ops"}]
            expect(page.locator('#consent-totals [data-key="opt_outs"]')).to_have_text("2", timeout=10_000)
            assert [tr.get_attribute("data-event-id") for tr in page.query_selector_all("#review-queue tbody tr")] == \
                queue[1:]

            # The details link of a dead letter.
            page.click("#dead-letter-reasons a")
            page.wait_for_url(f"{base}/dashboard/dead-letters?id={letter['id']}")
            assert "{not json" in page.inner_text("pre.raw >> nth=1")
            page.go_back()
            page.wait_for_selector("#flow .chart svg rect")

            # Each section says when its figures were read
            for name in ("flow", "deliverability", "consent"):
                assert page.get_attribute(f"#{name} .section-updated", "data-updated"), name

            # The README's screenshot shows a pipeline at work: a worker process registered, not
            # "Workers 0" in the alarm colour.
            with worker_process(settings):
                expect(page.locator('[data-status="workers"] dd')).to_have_text("1", timeout=30_000)
                assert "warn" not in (page.get_attribute('[data-status="workers"]', "class") or "")
                assert [t.get_attribute("data-status") for t in page.query_selector_all("#status-tiles .tile.warn")] == [
                    "dead_letters"]  # the one dead letter of the traffic, and only it
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.close()
    finally:
        dash.close()
    assert problems == []  # no script error, no CSP violation
    assert SCREENSHOT.stat().st_size > 10_000
