"""The dashboard's pure parts: shaping the sections, chart specifications, sessions, CSRF, the cache."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from starlette.requests import Request

from api.config import ApiConfig
from api.dashboard import PUBLIC_PATHS, data
from api.dashboard.app import BIGINT_MAX, MAX_FORM_BYTES, SECTIONS, STATIC_FILES, _env, read_form, whole_number
from api.dashboard.cache import TTLCache
from api.dashboard.review import check_input
from api.dashboard.session import Signer, csrf_ok, same_origin
from api.errors import ApiError
from shared import reports

START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TODAY = date(2026, 12, 1)


def minute(i: int) -> datetime:
    return START + timedelta(minutes=i)


def test_minute_series_fills_every_minute_and_orders_outcomes() -> None:
    rows = [
        {"provider": "cm", "outcome": "status", "minute": minute(0), "n": 3},
        {"provider": "cm", "outcome": "inbound", "minute": minute(59), "n": 2},
        {"provider": "cm", "outcome": "dead_letter", "minute": minute(10), "n": 1},
        {"provider": "mx2", "outcome": "status", "minute": minute(5), "n": 4},
        {"provider": "mx2", "outcome": "status", "minute": minute(60), "n": 9},  # past the window: left out
        {"provider": "mx2", "outcome": "status", "minute": minute(-1), "n": 9},  # before it: left out
    ]
    shaped = data.minute_series(rows, START)
    assert len(shaped["minutes"]) == 60 and shaped["minutes"][0] == START.isoformat()
    assert shaped["minutes"][-1] == minute(59).isoformat()
    assert shaped["providers"] == ["cm", "mx2"]
    assert [(s["provider"], s["outcome"], s["total"]) for s in shaped["series"]] == [
        ("cm", "inbound", 2), ("cm", "status", 3), ("cm", "dead_letter", 1), ("mx2", "status", 4)]
    cm_inbound = shaped["series"][0]["values"]
    assert cm_inbound[59] == 2 and sum(cm_inbound) == 2 and len(cm_inbound) == 60
    assert shaped["total"] == 10


def test_minute_series_of_nothing() -> None:
    shaped = data.minute_series([], START)
    assert shaped == {"minutes": [minute(i).isoformat() for i in range(60)], "providers": [], "series": [], "total": 0}
    assert data.flow_charts(shaped) == []


def test_flow_charts_one_per_provider_stacked_by_outcome() -> None:
    shaped = data.minute_series([{"provider": "cm", "outcome": "status", "minute": minute(1), "n": 3},
                                 {"provider": "cm", "outcome": "dead_letter", "minute": minute(1), "n": 1},
                                 {"provider": "smsmode", "outcome": "inbound", "minute": minute(2), "n": 5}], START)
    charts = data.flow_charts(shaped)
    assert [c["provider"] for c in charts] == ["cm", "smsmode"]
    cm = charts[0]["spec"]
    assert cm["kind"] == "stacked" and cm["format"] == "time" and len(cm["labels"]) == 60
    assert [(s["name"], s["cls"], s["values"][1]) for s in cm["series"]] == [("status", "o-status", 3),
                                                                            ("dead_letter", "o-dead_letter", 1)]


def day_row(provider: str, sender: str, day: date, **counts: int) -> dict[str, Any]:
    row = {"provider": provider, "sender": sender, "day": day, **dict.fromkeys(reports.COUNTS, 0), **counts}
    row["total"] = sum(counts.values())
    return row


def test_shape_deliverability_totals_senders_and_days() -> None:
    rows = [  # as reports.deliverability orders them: provider, newest day first, sender
        day_row("gatewayapi", "", TODAY, delivered=2, failed=1),
        day_row("smsmode", "36034", TODAY, delivered=2, sent=1),
        day_row("smsmode", "INFO", TODAY, rejected=1),
        day_row("smsmode", "36034", TODAY - timedelta(days=13), expired=1, delivered=1),
        day_row("smsmode", "36034", TODAY - timedelta(days=14), delivered=7),  # outside the 14 days of the chart
    ]
    shaped = data.shape_deliverability(rows, TODAY)
    assert shaped["days"][0] == (TODAY - timedelta(days=13)).isoformat() and shaped["days"][-1] == TODAY.isoformat()
    providers = {r["provider"]: r for r in shaped["by_provider"]}
    assert providers["smsmode"]["delivered"] == 10 and providers["smsmode"]["total"] == 13
    assert providers["gatewayapi"]["delivery_rate"] == round(2 / 3, 4)
    assert providers["smsmode"]["delivery_rate"] == round(10 / 12, 4)  # sent is in flight: not in the rate
    senders = [(s["provider"], s["sender"], s["total"], s["delivery_rate"]) for s in shaped["by_sender"]]
    assert senders == [("gatewayapi", "", 3, round(2 / 3, 4)), ("smsmode", "36034", 12, round(10 / 11, 4)),
                       ("smsmode", "INFO", 1, 0.0)]
    daily = {d["provider"]: d for d in shaped["daily"]}
    assert daily["smsmode"]["delivered"][-1] == 2 and daily["smsmode"]["delivered"][0] == 1
    assert daily["smsmode"]["expired"][0] == 1 and sum(daily["smsmode"]["delivered"]) == 3
    assert shaped["total"] == 16
    charts = data.deliverability_charts(shaped)
    assert [c["provider"] for c in charts] == ["gatewayapi", "smsmode"]
    assert [s["name"] for s in charts[0]["spec"]["series"]] == ["delivered", "failed", "expired", "rejected"]


def test_shape_consent_per_day() -> None:
    rows = [{"day": TODAY, "new_state": "opted_out", "n": 3}, {"day": TODAY, "new_state": "opted_in", "n": 1},
            {"day": TODAY - timedelta(days=2), "new_state": "opted_out", "n": 2},
            {"day": TODAY - timedelta(days=20), "new_state": "opted_out", "n": 9}]
    shaped = data.shape_consent(rows, TODAY)
    assert shaped["opt_outs"][-1] == 3 and shaped["opt_outs"][-3] == 2 and shaped["opt_ins"][-1] == 1
    assert (shaped["total_opt_outs"], shaped["total_opt_ins"]) == (5, 1)
    chart = data.consent_chart(shaped)
    assert chart["kind"] == "grouped"
    assert [s["values"] for s in chart["series"]] == [shaped["opt_outs"], shaped["opt_ins"]]


def test_no_traffic_needs_an_empty_stream_and_nothing_this_hour() -> None:
    empty = {"status": {"stream_length": 0, "dead_letters": 0}, "per_minute": data.minute_series([], START)}
    assert data.no_traffic(empty)
    assert not data.no_traffic({**empty, "status": {"stream_length": 3, "dead_letters": 0}})
    assert not data.no_traffic({**empty, "status": {"stream_length": 0, "dead_letters": 1}})
    busy = data.minute_series([{"provider": "cm", "outcome": "status", "minute": START, "n": 1}], START)
    assert not data.no_traffic({**empty, "per_minute": busy})


# -- sessions and CSRF ---------------------------------------------------------------------------


def test_session_cookie_round_trip_and_tampering() -> None:
    signer = Signer(b"k" * 32)
    value, session = signer.issue("ops", now=1000.0)
    assert signer.read(value, now=1001.0) == session
    assert session.label == "ops" and len(session.csrf) >= 40
    assert "ops-secret" not in value
    payload, mac = value.split(".")
    assert signer.read(payload + "." + mac[:-2] + "AA", now=1001.0) is None
    assert signer.read(payload[:-2] + "xx." + mac, now=1001.0) is None
    assert signer.read(value, now=1000.0 + signer.max_age_s + 1) is None  # expired
    assert Signer(b"j" * 32).read(value, now=1001.0) is None  # another key
    for junk in (None, "", ".", "a.b", "x" * 5000):
        assert signer.read(junk) is None


def test_signer_from_the_configured_secret() -> None:
    config = ApiConfig.from_env({"HOOKSTREAM_DASHBOARD_SECRET": "s" * 20, "HOOKSTREAM_DASHBOARD_COOKIE_SECURE": "1"})
    assert config.dashboard_cookie_secure and not ApiConfig.from_env({}).dashboard_cookie_secure
    assert "s" * 20 not in repr(config)
    a = Signer.from_secret(config.dashboard_secret)
    b = Signer.from_secret(config.dashboard_secret)
    value, _ = a.issue("ops")
    assert b.read(value) is not None  # replicas sharing the variable share sessions
    assert Signer.from_secret(ApiConfig.from_env({}).dashboard_secret).read(value) is None  # unset: a random key
    with pytest.raises(ValueError):
        Signer(b"short")


def test_csrf_and_origin() -> None:
    _, session = Signer(b"k" * 32).issue("ops")
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, "") and not csrf_ok(session, session.csrf + "x")

    def request(headers: dict[str, str]) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/", "headers": [
            (k.encode(), v.encode()) for k, v in headers.items()]})

    assert same_origin(request({"host": "dash.example:8080"}))
    assert same_origin(request({"host": "dash.example:8080", "origin": "https://dash.example:8080"}))
    assert not same_origin(request({"host": "dash.example:8080", "origin": "https://evil.example"}))
    assert not same_origin(request({"host": "dash.example:8080", "origin": "null"}))
    # Origins urlsplit() cannot read (an open IPv6 bracket; a host that NFKC changes) are refused, not a 500.
    assert not same_origin(request({"host": "dash.example:8080", "origin": "http://["}))
    assert not same_origin(Request({"type": "http", "method": "POST", "path": "/", "headers": [
        (b"host", b"dash.example:8080"), (b"origin", "http://\uff03x".encode())]}))


@pytest.mark.parametrize(("text", "expected"), [
    ("1", 1), ("0042", 42), (str(BIGINT_MAX), BIGINT_MAX), ("0", None),
    ("", None), ("\u00b2", None), ("\u0661\u0662", None), ("\uff11", None),  # digits isdigit() accepts, not ASCII
    ("1" * 5000, None), (str(BIGINT_MAX + 1), None), ("-1", None), ("+1", None), (" 1", None), ("1 ", None),
    ("1.0", None), ("1e3", None), ("0x1", None), ("1_000", None),
])
def test_whole_number_reads_ascii_digits_within_bounds(text: str, expected: int | None) -> None:
    assert whole_number(text, low=1) == expected


@pytest.mark.parametrize("declared", [b"\xb2", b"1" * 5000, str(BIGINT_MAX + 1).encode(), b"-1", b"",
                                      str(MAX_FORM_BYTES + 1).encode()])
def test_a_content_length_that_is_not_a_small_number_reads_no_form(declared: bytes) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"token=x", "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/login", "headers": [
        (b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", declared)]}, receive)
    assert asyncio.run(read_form(request)) is None


def test_review_input_rules_are_the_apis() -> None:
    check_input("cm:inbound:h:abc", "opt_out")
    check_input("x", "dismiss")
    for event_id, decision in (("x", "maybe"), ("", "dismiss"), ("a" * 513, "dismiss"), ("a\x00b", "dismiss")):
        with pytest.raises(ApiError) as refused:
            check_input(event_id, decision)
        assert refused.value.status == 422


# -- the cache -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_and_drop() -> None:
    clock = Clock()
    cache = TTLCache({"a": 2.0, "off": 0.0}, clock=clock)
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    try:
        assert cache.get("a", compute) == 1
        clock.now += 1
        assert cache.get("a", compute) == 1
        cache.drop("a")
        assert cache.get("a", compute) == 2
        clock.now += 100  # nobody asked for a long time: not kept warm, so computed again
        assert cache.get("a", compute) == 3
        assert cache.get("off", compute) == 4 and cache.get("off", compute) == 5  # TTL 0: always computed
    finally:
        cache.close()


def test_cache_single_flight() -> None:
    cache = TTLCache({"a": 60.0})
    started = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return "v"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a", slow))) for _ in range(5)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    finally:
        cache.close()
    assert results == ["v"] * 5 and len(calls) == 1


def test_cache_is_kept_warm_while_asked() -> None:
    cache = TTLCache({"a": 0.2})
    counter = iter(range(1000))
    try:
        first = cache.get("a", lambda: next(counter))
        # The background thread recomputes it, unasked, at one of its half-second ticks.
        deadline = time.monotonic() + 30
        while cache.peek("a") == first:
            assert time.monotonic() < deadline, "not recomputed in the background"
            time.sleep(0.05)
        later = cache.get("a", lambda: -1)
        assert later > first and later != -1
    finally:
        cache.close()


# -- routes and templates ------------------------------------------------------------------------


def test_public_paths_are_exact_and_cover_the_static_files() -> None:
    assert {"/", "/login", "/logout", "/dashboard/review", "/dashboard/dead-letters"} <= PUBLIC_PATHS
    assert {f"/dashboard/data/{s}" for s in SECTIONS} <= PUBLIC_PATHS
    assert {f"/dashboard/partial/{s}" for s in SECTIONS} <= PUBLIC_PATHS
    assert set(STATIC_FILES) == {"dashboard.css", "dashboard.js"}
    assert {f"/dashboard/static/{f}" for f in STATIC_FILES} <= PUBLIC_PATHS
    assert not any(p.startswith("/v1/") or p == "/openapi.json" for p in PUBLIC_PATHS)


def test_templates_escape_what_they_show() -> None:
    env = _env()
    item = {"event_key": 'k"><script>x</script>', "provider": "cm", "subject": "+31600000000", "scope": "3669",
            "body": "<img src=x onerror=alert(1)>", "keyword": "stop", "received_at": "2026-12-01T10:00:00+00:00",
            "can_opt_out": True}
    html = env.get_template("_consent.html").render(
        consent={"errors": [], "total_opt_outs": 0, "total_opt_ins": 0, "review": {"count": 1, "items": [item]}},
        consent_chart={}, csrf="tok", refresh_s=5)
    assert "<script>x</script>" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
