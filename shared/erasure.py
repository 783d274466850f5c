"""Erasure of one person: a keyed hash in place of the number and its texts, in Postgres and Redis.

The hash is `erased:` + HMAC-SHA-256(HOOKSTREAM_ERASURE_KEY, subject): without the key nobody can
test a number against it; with it, hookstream can still answer "this number opted out" (a lookup
asks for the number and its hash). Postgres does the rows in one statement (`consent_erase`,
migration 009). The raw stream is a buffer in front of Postgres, so:

- an entry the workers have processed (acknowledged) is deleted now;
- an entry not yet processed is marked in `stream_key(stream)` (entry id → what to erase) and erased by the
  worker whose batch holds it, after that batch commits (`erase_committed`): deleting it now would
  lose a STOP the person sent, and its rows do not exist yet.

Entries of the parked stream and of the outbound consent-change stream that name the person are
deleted too. Finding entries reads the streams (a few seconds per million entries).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import orjson
import phonenumbers
import psycopg
from redis import Redis

PREFIX = "erased:"
ERASE_SQL = "SELECT consent_erase(%s, %s, %s, %s, %s::jsonb)"
SCAN_COUNT = 1000


def keyed_hash(key: str, subject: str) -> str:
    return PREFIX + hmac.new(key.encode(), subject.encode(), hashlib.sha256).hexdigest()


def hashes(keys: Sequence[str], subject: str) -> list[str]:
    """The subject's hash under each erasure key (the first hashes new erasures; older ones after a
    rotation still find what was erased under them)."""
    return [keyed_hash(key, subject) for key in keys]


def notations(subject: str) -> list[str]:
    """The ways a number is written in raw requests: E.164, without `+`, with `00`, URL-encoded, and
    national. An id (Mx2 subscriberId) is only itself."""
    if not subject.startswith("+") or not subject[1:].isdigit():
        return [subject]
    digits = subject[1:]
    forms = [subject, digits, "00" + digits, "%2B" + digits, "%2b" + digits]
    try:
        national = phonenumbers.format_number(phonenumbers.parse(subject), phonenumbers.PhoneNumberFormat.NATIONAL)
    except phonenumbers.NumberParseException:
        national = ""
    national_digits = "".join(c for c in national if c.isdigit())
    if len(national_digits) >= 6:  # shorter ones would match inside unrelated numbers
        forms.append(national_digits)
    return forms


def mentions(fields: Mapping[bytes, bytes], needles: Sequence[bytes]) -> bool:
    return any(needle in value for value in fields.values() for needle in needles)


def stream_key(stream: str) -> str:
    """Hash: entry id of the raw stream (shard) `stream` → JSON of what to erase once the entry's batch
    has committed. Named after its stream, so that on a Redis Cluster it shares the shard's slot."""
    return f"{stream}:erase-on-commit"


@dataclass(frozen=True, slots=True)
class Target:
    subject: str
    hash: str
    notations: list[str]

    def as_json(self) -> bytes:
        return orjson.dumps({"subject": self.subject, "hash": self.hash, "notations": self.notations})

    @classmethod
    def from_json(cls, raw: bytes) -> Target:
        data = orjson.loads(raw)
        return cls(str(data["subject"]), str(data["hash"]), [str(n) for n in data["notations"]])


def _matching(redis: Redis, stream: str, needles: Sequence[bytes]) -> list[str]:
    found: list[str] = []
    start = "-"
    while True:
        batch = redis.xrange(stream, start, "+", count=SCAN_COUNT)
        for sid, fields in batch:
            if mentions(fields, needles):
                found.append(sid.decode())
        if len(batch) < SCAN_COUNT:
            return found
        start = "(" + batch[-1][0].decode()


def _unprocessed(redis: Redis, stream: str, group: str, ids: Iterable[str]) -> set[str]:
    """Entries the group has not acknowledged: pending, or not yet delivered."""
    groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g for g in redis.xinfo_groups(stream)}
    info = groups.get(group)
    if info is None:
        return set(ids)  # no group yet: nothing was processed
    last = info["last-delivered-id"]
    last_id = tuple(int(p) for p in (last.decode() if isinstance(last, bytes) else last).split("-"))
    waiting: set[str] = set()
    for sid in ids:
        if tuple(int(p) for p in sid.split("-")) > last_id or redis.xpending_range(stream, group, sid, sid, 1):
            waiting.add(sid)
    return waiting


def erase_streams(redis: Redis, target: Target, *, streams: Sequence[str], group: str,
                  others: Sequence[str]) -> dict[str, int]:
    """Delete the processed raw entries naming the person (each shard's stream), mark the unprocessed
    ones, delete their entries in the other streams (parked, outbound consent changes). Counts for
    the audit."""
    needles = [n.encode() for n in target.notations]
    deleted = marked = 0
    for stream in streams:
        ids = _matching(redis, stream, needles) if redis.exists(stream) else []
        waiting = _unprocessed(redis, stream, group, ids) if ids else set()
        done = [sid for sid in ids if sid not in waiting]
        if waiting:
            redis.hset(stream_key(stream), mapping={sid: target.as_json() for sid in sorted(waiting)})
        if done:
            redis.xdel(stream, *done)
            redis.hdel(stream_key(stream), *done)  # marked by an earlier request whose worker could not finish
        deleted, marked = deleted + len(done), marked + len(waiting)
    other = 0
    for name in others:
        found = _matching(redis, name, needles) if redis.exists(name) else []
        if found:
            other += int(redis.xdel(name, *found))
    return {"stream_entries_deleted": deleted, "stream_entries_marked": marked, "other_stream_entries": other}


def erase_rows(conn: psycopg.Connection[Any], target: Target, actor: str, stream: Mapping[str, int]) -> dict[str, int]:
    with conn.transaction():
        row = conn.execute(ERASE_SQL, (target.subject, target.hash, target.notations, actor,
                                       orjson.dumps(dict(stream)).decode())).fetchone()
    return dict(row[0]) if row else {}


def erase_committed(redis: Redis, connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
                    stream: str, ids: Sequence[str]) -> int:
    """After a batch committed: erase the people whose erasure waited for these entries (their rows
    are now in Postgres), then the entries. Returns how many entries were erased. One HMGET when
    nothing waits, which is nearly always. If Postgres fails here the marks stay, and the same
    DELETE request again (idempotent) finishes the erasure."""
    if not ids:
        return 0
    key = stream_key(stream)
    marked = [(sid, raw) for sid, raw in zip(ids, redis.hmget(key, list(ids))) if raw is not None]
    if not marked:
        return 0
    targets = {target.hash: target for target in (Target.from_json(raw) for _, raw in marked)}
    with connect() as conn:
        for target in targets.values():
            erase_rows(conn, target, "worker", {})
    done = [sid for sid, _ in marked]
    redis.xdel(stream, *done)
    redis.hdel(key, *done)
    return len(done)
