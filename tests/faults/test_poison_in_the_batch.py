"""Poison in the batch: one hostile record of every class mixed into steady traffic of every provider.

Every few dozen requests the load carries one hostile record: over-long ids in every id, phone and
reference field of every provider; literal `\\u0000` escapes in the kept headers and real NULs in
bodies; bodies nested too deep on every JSON feed and in CM's XML; an oversized header; a
provider's redelivery of a consent message (with and without a provider time); a captured signed
callback replayed over an altered body. Afterwards:

- every good record is exactly its events (the reference accounting of `Pipeline.verify`), and
  none of them is a dead letter;
- every hostile record costs at most one dead letter, exactly those of the classes that cannot be
  read; the others are refused at the door (4xx) or become their events;
- nothing stays pending and the stream can be trimmed past every entry;
- consent is what replaying `consent_changes` gives, for every subject.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from bench.payloads import MAKERS, records
from shared.events import amend
from shared.settings import Settings
from tests.faults.conftest import PipelineFactory
from tests.faults.harness import UA_PREFIX, Load, Req, Requests, Servers, _rows, count
from tests.workers.test_consent_property import assert_changes_replay_to_consent
from workers.batch import write_with_retry
from workers.context import normalize_context
from workers.normalize import normalize_entries
from workers.upkeep import trim_cutoff

EVERY = 25  # one hostile record per this many requests
LONG_DIGITS = "9" * 3000  # a phone or numeric id field keeps digits: the length cap refuses it
LONG_TEXT = "x" * 3000
DEEP = b"[" * 600 + b"]" * 600  # read by orjson (up to 1024 levels), never written back by it (254)


@dataclass(frozen=True)
class HostileAgent(Req):
    """A request whose User-Agent carries a literal `\\u0000` (six characters) after its number."""

    def with_seq(self, seq: int, attempt: int = 1) -> Req:
        made = super().with_seq(seq, attempt)
        return Req(made.method, made.path, made.query, made.body,
                   {**made.headers, "user-agent": made.headers["user-agent"] + "\\u0000agent"})


def _json(maker: Callable[..., tuple[str, str, str, bytes, bytes]], change: Callable[[dict[str, Any]], None],
          requests: Requests, i: int, rng: random.Random) -> Req:
    provider, feed, content_type, body, query = maker(i, rng)
    data = orjson.loads(body)
    change(data)
    return requests.from_record(provider, feed, content_type, orjson.dumps(data), query)


def _deep(maker: Callable[..., tuple[str, str, str, bytes, bytes]], requests: Requests, i: int,
          rng: random.Random) -> Req:
    """The record with an unread field nested 600 levels deep, spliced into its JSON text."""
    provider, feed, content_type, body, query = maker(i, rng)
    return requests.from_record(provider, feed, content_type, body[:-1] + b',"unread":' + DEEP + b"}", query)


def _query(maker: Callable[..., tuple[str, str, str, bytes, bytes]], name: str, value: str,
           requests: Requests, i: int, rng: random.Random) -> Req:
    provider, feed, content_type, body, query = maker(i, rng)
    params = dict(pair.split("=", 1) for pair in query.decode().split("&"))
    params[name] = value
    return requests.from_record(provider, feed, content_type, body, "&".join(f"{k}={v}" for k, v in params.items()).encode())


_cm_mo, _cm_status, _cm_event, _smsmode_status, _smsmode_mo, _mx2, _gwapi_dlr, _gwapi_mo, _gwapi_event = MAKERS


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *outer, last = path.split(".")
        node = data
        for key in outer:
            node = node[key]
        node[last] = value
    return change


# name → (what it costs: "dead" one dead letter, "refused" a 4xx, "events" its events; the request)
Maker = Callable[[Requests, int, random.Random], Req]
HOSTILE: dict[str, tuple[str, Maker]] = {
    "cm mo: reference too long": ("dead", lambda q, i, r: _json(_cm_mo, _set("reference", LONG_TEXT), q, i, r)),
    "cm mo: from too long": ("dead", lambda q, i, r: _json(_cm_mo, _set("from", "+" + LONG_DIGITS), q, i, r)),
    "cm status: reference too long": ("dead", lambda q, i, r: _json(_cm_status, _set("messages.msg.reference",
                                                                                     LONG_TEXT), q, i, r)),
    "cm status: to too long": ("dead", lambda q, i, r: _json(_cm_status, _set("messages.msg.to", LONG_DIGITS), q, i, r)),
    "cm event: reference too long": ("dead", lambda q, i, r: _json(_cm_event, _set("reference", LONG_TEXT), q, i, r)),
    "smsmode status: smsID too long": ("dead", lambda q, i, r: _query(_smsmode_status, "smsID", LONG_TEXT, q, i, r)),
    "smsmode status: numero too long": ("dead", lambda q, i, r: _query(_smsmode_status, "numero", LONG_DIGITS, q, i, r)),
    "smsmode mo: emetteur too long": ("dead", lambda q, i, r: _query(_smsmode_mo, "emetteur", LONG_DIGITS, q, i, r)),
    "smsmode mo: responseID too long": ("dead", lambda q, i, r: _query(_smsmode_mo, "responseID", LONG_TEXT, q, i, r)),
    "mx2: subscriberId too long": ("dead", lambda q, i, r: _json(_mx2, _set("subscriberId", LONG_TEXT), q, i, r)),
    "mx2: cguid too long": ("dead", lambda q, i, r: _json(_mx2, _set("cguid", LONG_TEXT), q, i, r)),
    "gatewayapi dlr: userref too long": ("dead", lambda q, i, r: _json(_gwapi_dlr, _set("userref", LONG_TEXT), q, i, r)),
    "gatewayapi mo: msisdn too long": ("dead", lambda q, i, r: _json(_gwapi_mo, _set("msisdn", LONG_DIGITS), q, i, r)),
    "gatewayapi event: msg_id too long": ("dead", lambda q, i, r: _json(_gwapi_event, _set("event.msg_id", LONG_TEXT),
                                                                        q, i, r)),
    "cm mo: deep": ("dead", lambda q, i, r: _deep(_cm_mo, q, i, r)),
    "cm status: deep": ("dead", lambda q, i, r: _deep(_cm_status, q, i, r)),
    "cm event: deep": ("dead", lambda q, i, r: _deep(_cm_event, q, i, r)),
    "mx2: deep": ("dead", lambda q, i, r: _deep(_mx2, q, i, r)),
    "gatewayapi dlr: deep": ("dead", lambda q, i, r: _deep(_gwapi_dlr, q, i, r)),
    "gatewayapi event: deep": ("dead", lambda q, i, r: _deep(_gwapi_event, q, i, r)),
    "cm mo xml: deep": ("dead", lambda q, i, r: q.sign(Req(
        "POST", "/webhooks/cm/mo", "", ("<MO>" + "<a>" * 40 + "</a>" * 40 + "<FROM>+31611111111</FROM><TO>3669</TO>"
                                        "<BODY>STOP</BODY></MO>").encode(), {"content-type": "application/xml"}))),
    "header: literal \\u0000 in User-Agent": ("events", lambda q, i, r: _hostile_agent(q.from_record(*_mx2(i, r)))),
    "header: literal \\u0000 in Content-Type": ("events", lambda q, i, r: _with_header(
        q.from_record(*_cm_mo(i, r)), "content-type", "application/json; charset=\\u0000")),
    "body: NUL in a text and a key": ("events", lambda q, i, r: _json(
        _cm_mo, lambda d: d.update({"body": "hello\u0000there", "extra\u0000": "v\u0000"}), q, i, r)),
    "header: 40 KB Content-Type": ("refused", lambda q, i, r: _with_header(
        q.from_record(*_cm_mo(i, r)), "content-type", "application/json; x=" + "y" * 40_000)),
}


def _hostile_agent(req: Req) -> Req:
    return HostileAgent(req.method, req.path, req.query, req.body, req.headers, req.phone, req.text)


def _with_header(req: Req, name: str, value: str) -> Req:
    return Req(req.method, req.path, req.query, req.body, {**req.headers, name: value}, req.phone, req.text)


class PoisonMix:
    """Good records of every provider; every EVERY-th request a hostile one, the classes in turn.

    Two classes need history: a redelivery repeats an earlier consent message exactly (CM's carry
    no provider time, Mx2's do), and a replayed GatewayAPI callback keeps an earlier request's
    signature over an altered body.
    """

    def __init__(self, requests: Requests) -> None:
        self.requests = requests
        self.kinds: dict[int, tuple[str, str]] = {}
        self.consent_messages: list[Req] = []
        self.signed: list[Req] = []
        self.classes = [*HOSTILE, "redelivered consent message", "replayed signature, altered body"]

    def __call__(self, i: int, rng: random.Random) -> Req:
        if i % EVERY != EVERY - 1:
            return self.good(i, rng)
        name = self.classes[(i // EVERY) % len(self.classes)]
        if name == "redelivered consent message" and self.consent_messages:
            self.kinds[i] = (name, "events")
            return rng.choice(self.consent_messages)
        if name == "replayed signature, altered body" and self.signed:
            original = rng.choice(self.signed)
            data = orjson.loads(original.body)
            data["status"] = "DELIVERED" if data.get("status") != "DELIVERED" else "UNDELIVERABLE"
            data.pop("time", None)
            self.kinds[i] = (name, "refused")
            return Req(original.method, original.path, original.query, orjson.dumps(data), dict(original.headers))
        if name not in HOSTILE:
            return self.good(i, rng)
        cost, make = HOSTILE[name]
        self.kinds[i] = (name, cost)
        return make(self.requests, i, rng)

    def good(self, i: int, rng: random.Random) -> Req:
        provider, feed, content_type, body, query = MAKERS[i % len(MAKERS)](i, rng)
        req = self.requests.from_record(provider, feed, content_type, body, query)
        if (provider, feed) in (("cm", "mo"), ("mx2", "webhook")) and len(self.consent_messages) < 200:
            self.consent_messages.append(req)
        if (provider, feed) == ("gatewayapi", "rest") and b'"status"' in body and len(self.signed) < 200:
            self.signed.append(req)
        return req


def _seq(agent: str | None) -> int | None:
    if not agent or not agent.startswith(UA_PREFIX):
        return None
    return int(agent[len(UA_PREFIX):].split("/", 1)[0])


@pytest.mark.faults_long
@pytest.mark.timeout(900)
def test_long_poison_in_the_batch_under_load(make_pipeline: PipelineFactory, requests_: Requests) -> None:
    pipeline = make_pipeline(workers=2, HOOKSTREAM_STREAM_RETENTION="1s")
    mix = PoisonMix(requests_)
    load = Load(pipeline.url, requests_, rate=150, seed=909, make=mix).start()
    load.wait_acked(len(mix.classes) * EVERY * 3)  # every class at least three times
    load.stop()
    drain_s = pipeline.wait_drained(240)
    verdict = pipeline.verify(load, label="poison in the batch: one hostile record every 25 requests")

    hostile = {seq: kind for seq, kind in mix.kinds.items() if seq in load.sent}
    dead_seqs = Counter(_seq(agent) for (agent,) in _rows(
        pipeline.servers.postgres.url, "SELECT headers->>'user-agent' FROM dead_letters"))
    expected_dead = {seq for seq, (_, cost) in hostile.items() if cost == "dead" and seq in load.acked}
    spurious = {seq: n for seq, n in dead_seqs.items() if seq not in expected_dead}
    assert not spurious, f"dead letters of good records: {spurious}"
    assert all(n == 1 for n in dead_seqs.values()), "a hostile record cost more than one dead letter"
    assert set(dead_seqs) == expected_dead, f"hostile records not dead-lettered: {expected_dead - set(dead_seqs)}"
    refused = {seq for seq, (_, cost) in hostile.items() if cost == "refused"}
    assert not refused & load.acked, "a request that had to be refused was acknowledged"

    # Nothing holds the stream: with a retention of 1 s, the trim may remove every entry.
    r = pipeline.redis
    time.sleep(1.2)
    cutoff = trim_cutoff(r, pipeline.settings, int(time.time() * 1000))
    last = r.xrevrange(pipeline.settings.stream, count=1)[0][0].decode()
    assert cutoff is not None and tuple(map(int, cutoff.split("-"))) > tuple(map(int, last.split("-")))
    r.xtrim(pipeline.settings.stream, minid=cutoff, approximate=False)
    assert r.xlen(pipeline.settings.stream) == 0

    with psycopg.connect(pipeline.servers.postgres.url, autocommit=True) as conn:
        assert_changes_replay_to_consent(conn)

    by_class = Counter(name for seq, (name, _) in hostile.items() if seq in load.sent)
    count("poison_records", len(hostile))
    count("poison_dead_letters", len(dead_seqs))
    count("poison_classes", len(by_class))
    assert len(by_class) == len(mix.classes), f"classes never sent: {set(mix.classes) - set(by_class)}"
    assert drain_s < 60, f"the pipeline took {drain_s:.0f} s to drain after the load stopped"
    assert verdict.lost == 0 and verdict.duplicates == 0


@pytest.mark.parametrize("batch", [500])
def test_what_a_record_the_database_refuses_costs_one_worker(fault_servers: Servers, batch: int) -> None:
    """The price of the bisection: a batch with one record Postgres refuses against the same batch
    without it, in one worker's wall time. Reported in the figures (tests/faults/last-run.json)."""
    url = fault_servers.fresh_database("faults_poison_cost")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE events ADD CONSTRAINT poison CHECK (message_ref IS DISTINCT FROM 'poison')")
    settings = Settings(database_url=url)
    timings: dict[str, list[float]] = {"clean": [], "poisoned": []}
    with ConnectionPool(url, min_size=1, max_size=2, open=True, kwargs={"prepare_threshold": None}) as pool:
        for round_ in range(5):
            for label in ("clean", "poisoned"):
                raw = [(f"{round_}{label == 'poisoned':d}{n:06d}-0", r.to_fields())
                       for n, r in enumerate(records(batch, seed=round_ * 2 + (label == "poisoned")))]
                entries = normalize_entries(raw, normalize_context(settings))
                if label == "poisoned":
                    poison = next(i for i, e in enumerate(entries) if e.events and e.events[0].message_ref)
                    events = tuple(amend(e, message_ref="poison") for e in entries[poison].events)
                    entries[poison] = dataclasses.replace(entries[poison], events=events)
                started = time.perf_counter()
                result = write_with_retry(pool, entries, budget_s=30)
                timings[label].append(time.perf_counter() - started)
                assert result.dead_letters == (label == "poisoned")
    clean, poisoned = (sorted(timings[k])[len(timings[k]) // 2] for k in ("clean", "poisoned"))
    cost_ms = round((poisoned - clean) * 1000, 1)
    count("poison_cost_ms_per_500_batch", max(int(cost_ms), 0))
    print(f"a refused record in a batch of {batch}: {clean * 1000:.1f} ms clean, {poisoned * 1000:.1f} ms "
          f"poisoned, +{cost_ms} ms of one worker")
    assert poisoned < clean * 20 + 5, "the bisection costs more than a few batches' time"
