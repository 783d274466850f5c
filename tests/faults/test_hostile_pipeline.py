"""Hostile and repeated input through the whole pipeline, accounted for in Postgres afterwards.

- Property-based fuzzing of the ingress: random routes, methods, query strings (repeated keys,
  bad escapes), bodies (random bytes, invalid UTF-8, deep and huge JSON, XML entity expansion on
  the CM routes, broken payloads) with valid, missing or forged credentials. Every answer is a
  4xx or a 200; every 200 is in the stream and ends as its events or a dead letter with a reason.
- Floods: the same webhook 50 times at once is one event and at most one consent change; a
  provider's retry storm after an outage loses nothing and doubles nothing.
- SQL-looking and emoji texts arrive in events.body exactly as sent, on every MO route.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import (
    PATHS,
    TRICKY_TEXTS,
    Load,
    Pipeline,
    Req,
    Requests,
    Secrets,
    _rows,
    count,
    no_other_threads,
    sign_hmac,
    sign_jwt,
    wait_until,
)
from tests.faults.test_fuzz_normalizers import BILLION_LAUGHS, QUADRATIC, XXE, json_values

ALLOWED = {200, 307, 400, 401, 403, 404, 405, 413}  # 307: Starlette's redirect of a trailing slash


class Fuzzer:
    """Sends generated requests, numbering each one (User-Agent) like the load generator."""

    def __init__(self, pipeline: Pipeline, requests: Requests, start: int) -> None:
        self.pipeline = pipeline
        self.requests = requests
        self.client = httpx.Client(base_url=pipeline.url, timeout=60)  # a deadline, not a latency check
        self.seq = start
        self.acked: set[int] = set()
        self.statuses: dict[int, int] = {}

    def send(self, req: Req) -> int:
        self.seq += 1
        req = req.with_seq(self.seq)
        count("bad_inputs_tried")
        response = self.client.request(req.method, req.path + (f"?{req.query}" if req.query else ""),
                                       content=req.body or None, headers=req.headers)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 200:
            self.acked.add(self.seq)
        return response.status_code


@st.composite
def hostile_requests(draw: Any, requests: Requests) -> Req:
    kind = draw(st.sampled_from(["bytes", "json", "deep", "huge", "xml", "xml", "form", "valid"]))
    cm_paths = [path for (provider, _), path in PATHS.items() if provider == "cm"]
    path = draw(st.sampled_from(cm_paths)) if kind == "xml" else draw(st.sampled_from(
        sorted(PATHS.values()) * 6 + ["/webhooks/cm/mo/", "/webhooks/x", "/webhooks/cm/MO", "/%00", "/admin"]))
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=400))
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        depth = draw(st.integers(100, 20_000))
        body = draw(st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth]))
    elif kind == "huge":
        body = orjson.dumps({"messages": {"msg": [{"to": f"+3161234{i:04d}", "reference": f"r{i}",
                                                   "status": {"code": "2"}} for i in range(draw(st.integers(1, 700)))]}})
    elif kind == "xml":
        body = draw(st.sampled_from([BILLION_LAUGHS, XXE, QUADRATIC, b"<MO>" * 3000, b"<MO><FROM>+31612345678</FROM>"
                                     b"<BODY>\xff\xfe</BODY></MO>", b"<?xml version='1.0' encoding='latin-1'?><MO/>"]))
    elif kind == "form":
        keys = draw(st.lists(st.sampled_from(["numero", "statut", "smsID", "emetteur", "message", "token", "a"]),
                             max_size=8))
        body = "&".join(f"{k}={draw(st.sampled_from(['', '%', '%zz', '%ff', '3999', 'STOP', '%00', '1']))}"
                        for k in keys).encode()
    else:
        body = orjson.dumps({"subscriberId": draw(st.text(max_size=5)), "cguid": "c", "status": draw(st.text(max_size=8))})
    query = draw(st.sampled_from(["", "", "a=1&a=2", "numero=1&numero=2&statut=11&statut=3999", "%zz=%", "token=",
                                  "x=%ff%fe", "&&&", "a" * 3000, "body=%E9t%E9&from=%2B31612345678"]))
    content_type = draw(st.sampled_from(["application/json", "text/xml", "application/x-www-form-urlencoded", "",
                                         "text/plain; charset=utf-16", "multipart/form-data; boundary=x"]))
    credentials = draw(st.sampled_from(["valid"] * 6 + ["none", "forged"]))
    headers = {"content-type": content_type} if content_type else {}
    req = Req(method, path, query, body, headers)
    if credentials == "valid" and path in PATHS.values():
        signed = requests.sign(Req("POST", path, query, body, headers))
        req = Req(method, signed.path, signed.query, body, signed.headers)
    elif credentials == "forged":
        req = Req(method, path, query + "&token=forged", body,
                  {**headers, "x-gwapi-signature": sign_jwt(b'{"id": 1}', "forged"),
                   "signature": sign_hmac(body, "forged"), "authorization": "Basic Zm9vOmJhcg=="})
    return req


def fuzz_ingress(pipeline: Pipeline, requests: Requests, examples: int) -> Fuzzer:
    fuzzer = Fuzzer(pipeline, requests, start=5_000_000)

    @settings(max_examples=examples, deadline=None, derandomize=examples < 1000,
              suppress_health_check=list(HealthCheck))
    @given(req=hostile_requests(requests))
    def one(req: Req) -> None:
        status = fuzzer.send(req)
        assert status in ALLOWED, (status, req.method, req.path, req.body[:80])

    no_other_threads()  # nothing may draw from the global `random` while hypothesis generates
    try:
        one()
    finally:
        fuzzer.client.close()
    assert pipeline.ingress is not None and pipeline.ingress.alive()
    return fuzzer


class _Acked:
    """The accounting's view of the fuzzer: what was acknowledged (no phones or texts to scan)."""

    def __init__(self, fuzzer: Fuzzer) -> None:
        self.acked = fuzzer.acked
        self.statuses = fuzzer.statuses
        self.phones: set[str] = set()
        self.texts: set[str] = set()
        self.server_errors = sum(n for s, n in fuzzer.statuses.items() if s >= 500)


def run_ingress_fuzz(pipeline: Pipeline, requests: Requests, examples: int) -> None:
    fuzzer = fuzz_ingress(pipeline, requests, examples)
    count("fuzz_requests_acknowledged", len(fuzzer.acked))
    pipeline.wait_drained()
    verdict = pipeline.verify(_Acked(fuzzer), label=f"ingress fuzzing, {examples} requests")  # type: ignore[arg-type]
    assert len(fuzzer.acked) > examples // 4, fuzzer.statuses
    reasons = [row[0] for row in _rows(pipeline.servers.postgres.url, "SELECT reason FROM dead_letters")]
    assert all(reason.strip() for reason in reasons)
    assert not [r for r in reasons if r.startswith("normalizer failed")], reasons
    assert any("XML refused" in r for r in reasons) or examples < 200
    assert verdict.dead_letters > 0


def test_fuzzed_requests_are_refused_or_accounted_for(pipeline: Pipeline, requests_: Requests) -> None:
    run_ingress_fuzz(pipeline, requests_, examples=300)


@pytest.mark.faults_long
@pytest.mark.timeout(600)
def test_long_fuzzed_requests_are_refused_or_accounted_for(pipeline: Pipeline, requests_: Requests) -> None:
    run_ingress_fuzz(pipeline, requests_, examples=3000)


# -- floods ------------------------------------------------------------------------------------------


async def _concurrently(url: str, req: Req, times: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=times)) as client:
        async def one(attempt: int) -> int:
            r = req.with_seq(9_000_000 + hash(req.body) % 100_000, attempt)
            response = await client.request(r.method, r.path + (f"?{r.query}" if r.query else ""),
                                            content=r.body or None, headers=r.headers)
            return response.status_code
        return list(await asyncio.gather(*(one(i) for i in range(times))))


def test_the_same_webhook_50_times_at_once_is_one_event(pipeline: Pipeline, requests_: Requests,
                                                        secrets: Secrets) -> None:
    rng = random.Random(5)
    stop = requests_.cm_mo_json(1, rng, "STOP")
    floods = {
        "cm MO STOP": stop,
        "smsmode blacklisted (global opt-out)": requests_.sign(Req(
            "GET", PATHS[("smsmode", "status")], "numero=33611223344&statut=3999&smsID=F1&date_reception=2025-03-25+"
            "09%3A52%3A17", b"", {})),
        "gatewayapi MO with a leased keyword": requests_.gwapi_mo(2, rng, "foo STOP"),
        "mx2 optout": requests_.sign(Req("POST", PATHS[("mx2", "webhook")], "", orjson.dumps(
            {"subscriberId": "flood-sub", "cguid": "C-F", "status": "optout", "datetime": "2024-03-25 20:01:58"}),
            {"content-type": "application/json"})),
        "gatewayapi status event": requests_.sign(Req("POST", PATHS[("gatewayapi", "events")], "", orjson.dumps(
            {"event_id": "flood-1", "timestamp": "2025-04-01T11:50:12+00:00", "event_type": "message.status.sms",
             "event": {"msg_id": "F1", "recipient": 4512345678, "status": "DELIVERED"}}), {"content-type": "application/json"})),
    }
    for label, req in floods.items():
        statuses = asyncio.run(_concurrently(pipeline.url, req, 50))
        count("flood_requests", 50)
        assert statuses == [200] * 50, (label, statuses)
    pipeline.wait_drained()
    url = pipeline.servers.postgres.url
    assert pipeline.redis.xlen(pipeline.settings.stream) == 50 * len(floods)
    events = _rows(url, "SELECT provider, kind, consent FROM events ORDER BY provider, kind")
    assert len(events) == len(floods) + 1, events  # smsmode 3999: a status and a consent event
    changes = _rows(url, "SELECT subject, scope, new_state FROM consent_changes ORDER BY subject")
    assert sorted(changes) == sorted([
        (f"+{stop.phone}", "3669", "opted_out"), ("+33611223344", "*", "opted_out"),
        (f"+{floods['gatewayapi MO with a leased keyword'].phone}", "451204/foo", "opted_out"),
        ("flood-sub", "C-F", "opted_out"),
    ]), changes
    statuses = _rows(url, "SELECT status FROM message_status WHERE message_ref = 'F1'")
    assert statuses == [("delivered",), ("rejected",)] or sorted(statuses) == [("delivered",), ("rejected",)]
    pipeline.verify(None, label="the same webhook 50 times at once (5 kinds)", acknowledged=50 * len(floods))


def retry_storm(make_pipeline: PipelineFactory, requests_: Requests, down_s: float, rate: float) -> None:
    """Providers retry every ~50 ms while Redis is down; when it is back the backlog of retries
    arrives at once. Every logical webhook is one set of events, however many copies are stored."""
    pipeline = make_pipeline()
    load = Load(pipeline.url, requests_, rate=rate, seed=77, retry_after=0.05, timeout_s=3).start()
    pipeline.wait_processed(50)

    def storm() -> None:
        # Redis stays down until a webhook sent after it went down was refused and refused again.
        since = time.monotonic()

        def refused_twice() -> bool:
            refused = [a.seq for a in load.attempts_within(since, time.monotonic()) if a.status == 503]
            return len(refused) > len(set(refused))

        wait_until(refused_twice, 60, "a webhook refused twice while Redis is down")

    down, restarting = pipeline.restart_redis(down_s, hard=True, during=storm)
    back = time.monotonic()
    wait_until(lambda: load.answers_within(back, time.monotonic())[200] > 50, 60, "200s after Redis is back")
    load.stop(settle_s=60)
    # Sent after Redis was surely down and answered before it was started again: never a 200.
    during = load.answers_within(down, restarting)
    assert set(during) <= {0, 503}, during
    refused = [a.seq for a in load.attempts_within(down, restarting) if a.status == 503]
    assert len(refused) > len(set(refused)) > 0, "the providers retried while Redis was down: a storm"
    assert load.acked == load.sent, f"{len(load.sent - load.acked)} webhooks never acknowledged"
    count("retry_storm_503s", load.statuses.get(503, 0))
    pipeline.wait_drained()
    verdict = pipeline.verify(load, label=f"retry storm, Redis down {down_s:g} s")
    assert verdict.entries >= len(load.acked)


def test_a_retry_storm_after_an_outage(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    retry_storm(make_pipeline, requests_, down_s=2.5, rate=60)


@pytest.mark.faults_long
@pytest.mark.timeout(300)
def test_long_a_retry_storm_after_a_long_outage(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    retry_storm(make_pipeline, requests_, down_s=10, rate=120)


# -- exact round trips ---------------------------------------------------------------------------------


def test_sql_and_emoji_texts_round_trip_exactly(pipeline: Pipeline, requests_: Requests) -> None:
    rng = random.Random(9)
    makers = [requests_.cm_mo_json, requests_.cm_mo_get, requests_.cm_mo_xml, requests_.smsmode_mo,
              requests_.gwapi_mo, requests_.gwapi_event_mo, requests_.mx2_reply]
    sent: dict[tuple[str, str], str] = {}
    with httpx.Client(base_url=pipeline.url, timeout=60) as client:
        i = 700_000
        for text in TRICKY_TEXTS:
            for make in makers:
                i += 1
                req = make(i, rng, text).with_seq(i)
                response = client.request(req.method, req.path + (f"?{req.query}" if req.query else ""),
                                          content=req.body or None, headers=req.headers)
                assert response.status_code == 200, (make.__name__, text)
                sent[(make.__name__, text)] = text
                count("round_trip_texts")
    pipeline.wait_drained()
    bodies = [row[0] for row in _rows(pipeline.servers.postgres.url, "SELECT body FROM events WHERE kind = 'inbound'")]
    assert len(bodies) == len(TRICKY_TEXTS) * len(makers)
    missing = [text for text in TRICKY_TEXTS if bodies.count(text) != len(makers)]
    assert not missing, [(t, [b for b in bodies if b and b[:6] == t[:6]]) for t in missing]
    dead = _rows(pipeline.servers.postgres.url, "SELECT reason FROM dead_letters")
    assert dead == [], dead
    pipeline.verify(None, label="SQL and emoji texts round trip", acknowledged=len(sent))
