"""Realistic, varied webhook records for the benchmarks: every provider and feed, unique ids.

Phone numbers come from a pool (real traffic repeats numbers); message ids and times vary so
dedupe does not collapse the load.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from urllib.parse import urlencode

import orjson

from shared.record import RawRecord

JSON = "application/json"


# 20,000 people for 100,000 webhooks: each message has several statuses and people reply more
# than once, so real traffic repeats numbers.
PEOPLE = 20_000


def _phone(rng: random.Random) -> str:
    return f"+316{10_000_000 + rng.randrange(PEOPLE) * 4099:08d}"


def _cm_mo(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    text = rng.choice(["STOP", "Yes please", "Thanks!", "stop sending me these", "START", "Hello there"])
    body = {"reference": f"ref-{i}", "from": _phone(rng), "to": "3669", "body": text, "groupings": ["", "", ""]}
    return "cm", "mo", JSON, orjson.dumps(body), b""


def _cm_status(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    msg = {"received": "2025-09-03T08:00:05", "to": _phone(rng), "reference": f"mt-{i // 3}",
           "status": {"code": rng.choice(["0", "2", "3"]), "errorCode": "", "errorDescription": ""}}
    return "cm", "status", JSON, orjson.dumps({"messages": {"msg": msg}}), b""


def _cm_event(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    body = {"reference": f"00000000-0000-4000-8000-{i:012d}", "from": {"number": _phone(rng)},
            "to": {"number": "+3222556611"}, "event": {"type": "SuggestionClick"}, "timeUtc": "2025-09-03T08:00:05",
            "channel": "RCS"}
    return "cm", "events", JSON, orjson.dumps(body), b""


def _smsmode_status(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    query = urlencode({"numero": _phone(rng)[1:], "date_reception": "2025-03-25 09:52:17",
                       "statut": rng.choice([11, 13, 35, 3999]), "smsID": f"S{i // 2}", "refClient": "r"})
    return "smsmode", "status", "", b"", query.encode()


def _smsmode_mo(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    query = urlencode({"numero": "36034", "message": rng.choice(["STOP", "Merci", "ARRET svp"]),
                       "emetteur": _phone(rng)[1:], "date_reception": "25032025-095217", "smsID": f"S{i}",
                       "responseID": f"R{i}"})
    return "smsmode", "mo", "", b"", query.encode()


def _mx2(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    status = rng.choice(["sent", "delivered", "failed", "received", "optout", "click"])
    body = {"subscriberId": f"sub{rng.randrange(50_000)}", "cguid": f"C-{i % 97}", "status": status,
            "statusMessage": "Undeliverable" if status == "failed" else "", "textMessage": "Yes" if status == "received" else "",
            "messageType": "Initial", "datetime": f"2024-03-25 20:{i % 60:02d}:{(i // 60) % 60:02d}"}
    return "mx2", "webhook", JSON, orjson.dumps(body), b""


def _gwapi_dlr(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    body = {"id": 1_000_000 + i // 3, "msisdn": int(_phone(rng)[1:]), "time": 1_700_000_000 + i,
            "status": rng.choice(["ENROUTE", "DELIVERED", "UNDELIVERABLE"]), "userref": f"u{i}"}
    return "gatewayapi", "rest", JSON, orjson.dumps(body), b""


def _gwapi_mo(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    body = {"id": i, "msisdn": int(_phone(rng)[1:]), "receiver": 451204, "message": rng.choice(["foo stop", "foo hi"]),
            "senttime": 1_700_000_000 + i, "webhook_label": "bench"}
    return "gatewayapi", "rest", JSON, orjson.dumps(body), b""


def _gwapi_event(i: int, rng: random.Random) -> tuple[str, str, str, bytes, bytes]:
    body = {"event_id": f"10000000-0000-4000-8000-{i:012d}", "timestamp": "2025-04-01T11:50:12.003029+00:00",
            "event_type": "message.status.sms",
            "event": {"msg_id": f"01JNN696A9E0WS89FP{i:08d}", "recipient": int(_phone(rng)[1:]), "reference": None,
                      "status": "DELIVERED", "status_at": "2025-04-01T11:50:11+00:00", "error": None}}
    return "gatewayapi", "events", JSON, orjson.dumps(body), b""


MAKERS = (_cm_mo, _cm_status, _cm_event, _smsmode_status, _smsmode_mo, _mx2, _gwapi_dlr, _gwapi_mo, _gwapi_event)


def records(count: int, seed: int = 7, start_ms: int = 1_790_000_000_000, first: int = 0) -> Iterator[RawRecord]:
    """`count` records; `first`: the number of the first, so that runs can make ids never used before."""
    rng = random.Random(seed)
    for i in range(first, first + count):
        provider, feed, content_type, body, query = MAKERS[i % len(MAKERS)](i, rng)
        yield RawRecord(provider=provider, feed=feed, method="GET" if query else "POST", query=query,
                        content_type=content_type, headers={"content-type": content_type} if content_type else {},
                        client="127.0.0.1", received_at_ms=start_ms + i - first, body=body)
