"""`hookstream send-test` builds each provider's request as the provider sends it: through a real
ingress (its own process, every provider locked down: tokens, GatewayAPI's JWT and HMAC secrets, CM
only from its published ranges behind a trusted proxy), every feed is accepted, and every record it
appended parses into events, none into a dead letter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from hookstream.embedded import _wait_for_port, free_port
from hookstream.send_test import ROUTES, Options, build, send
from shared.settings import Settings
from workers.context import normalize_context
from workers.normalize import normalize_entries

pytestmark = pytest.mark.integration

LOCKED = {
    "HOOKSTREAM_CM_TOKEN": "cm-token-0123456789", "HOOKSTREAM_SMSMODE_TOKEN": "sm-token-0123456789",
    "HOOKSTREAM_MX2_TOKEN": "mx-token-0123456789", "HOOKSTREAM_GATEWAYAPI_TOKEN": "gw-token-0123456789",
    "HOOKSTREAM_GATEWAYAPI_SECRET": "jwt-secret", "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET": "hmac-secret-0123456789",
    "HOOKSTREAM_TRUSTED_PROXIES": "127.0.0.1/32",
    # GatewayAPI's addresses come from its DNS names: this test stands in for them from loopback
    "HOOKSTREAM_GATEWAYAPI_ALLOWED_IPS": "127.0.0.1/32", "HOOKSTREAM_SMSMODE_ALLOWED_IPS": "127.0.0.1/32",
    "HOOKSTREAM_MX2_ALLOWED_IPS": "127.0.0.1/32",
}


@pytest.fixture
def ingress(redis_url: str, redis_client: redis.Redis) -> Iterator[tuple[str, Settings]]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKSTREAM_")}, **LOCKED,
           "HOOKSTREAM_REDIS_URL": redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", "ingress", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, 30, proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}", Settings.from_env(env)
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_feed_of_every_provider_is_accepted_and_parses(ingress: tuple[str, Settings],
                                                             redis_client: redis.Redis) -> None:
    base, settings = ingress
    cases = [(provider, feed, options) for provider, feed in ROUTES
             for options in (Options(text="STOP"), Options(status=None), Options(status=_delivered(provider)))]
    for number, (provider, feed, options) in enumerate(cases):
        request = build(provider, feed, settings, Options(options.status, options.text, serial=time.time_ns() + number,
                                                          now=datetime.now(UTC)))
        status, body = send(request, base)
        assert status == 200, (provider, feed, options, body)
    entries = [(sid.decode(), fields) for sid, fields in redis_client.xrange(settings.stream)]
    assert len(entries) == len(cases)
    for entry in normalize_entries(entries, normalize_context(settings)):
        assert entry.dead_reason is None and entry.events, entry
        assert b"token" not in dict(entries)[entry.stream_id].get(b"q", b"")  # the token is never stored


def _delivered(provider: str) -> str:
    return {"cm": "2", "smsmode": "11", "mx2": "delivered", "gatewayapi": "DELIVERED"}[provider]


def test_a_wrong_secret_is_refused(ingress: tuple[str, Settings]) -> None:
    base, _ = ingress
    wrong = Settings.from_env({**LOCKED, "HOOKSTREAM_GATEWAYAPI_SECRET": "other", "HOOKSTREAM_CM_TOKEN": "other",
                               "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET": "other"})
    assert send(build("gatewayapi", "rest", wrong, Options()), base)[0] == 401
    assert send(build("gatewayapi", "events", wrong, Options()), base)[0] == 401
    assert send(build("cm", "mo", wrong, Options()), base)[0] == 401
    untrusted = Settings.from_env({**LOCKED, "HOOKSTREAM_TRUSTED_PROXIES": ""})  # no X-Forwarded-For sent
    assert send(build("cm", "mo", untrusted, Options()), base)[0] == 403


def test_an_unknown_feed_names_the_right_ones() -> None:
    with pytest.raises(ValueError, match="mo, events, status"):
        build("cm", "dlr", Settings(), Options())
