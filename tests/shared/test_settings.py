"""Settings from the environment: every variable parsed once, secrets never shown, bad values named."""

from __future__ import annotations

import ipaddress

import pytest

from shared.errors import ConfigError
from shared.settings import Settings


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.max_body_bytes == 64 * 1024
    assert settings.stream_retention_s == 24 * 3600 and settings.archive_retention_s == 30 * 86400
    assert settings.allowed_ips == {"cm": None, "smsmode": None, "mx2": None, "gatewayapi": None}
    assert settings.stream == "hookstream:raw" and settings.group == "hookstream:workers"
    assert settings.metrics_allowed_ips.admits(ipaddress.ip_address("10.1.2.3"))
    assert not settings.metrics_allowed_ips.admits(ipaddress.ip_address("203.0.113.1"))


def test_every_variable_is_read() -> None:
    env = {
        "HOOKSTREAM_REDIS_URL": "redis://r:6379/1", "HOOKSTREAM_DATABASE_URL": "postgresql://u:pw@db/h",
        "HOOKSTREAM_TRUSTED_PROXIES": "10.0.0.0/8", "HOOKSTREAM_CM_ALLOWED_IPS": "192.0.2.0/24",
        "HOOKSTREAM_MX2_ALLOWED_IPS": "*", "HOOKSTREAM_SMSMODE_TOKEN": "t1,t2",
        "HOOKSTREAM_GATEWAYAPI_SECRET": "jwt-key", "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET": "hmac-key",
        "HOOKSTREAM_MAX_BODY_BYTES": "1000", "HOOKSTREAM_STREAM_RETENTION": "2h", "HOOKSTREAM_KEY_PREFIX": "hs",
        "HOOKSTREAM_GATEWAYAPI_KEYWORDS": "Foo, BAR", "HOOKSTREAM_DEFAULT_REGION": "nl",
    }
    s = Settings.from_env(env)
    assert (s.redis_url, s.database_url, s.max_body_bytes, s.stream_retention_s) == (
        "redis://r:6379/1", "postgresql://u:pw@db/h", 1000, 7200)
    assert s.trusted_proxies.admits(ipaddress.ip_address("10.9.9.9"))
    assert s.allowed_ips["cm"] is not None and s.allowed_ips["mx2"] is not None and s.allowed_ips["mx2"].any_address
    assert s.tokens["smsmode"] is not None and s.tokens["smsmode"].values == ("t1", "t2")
    assert s.gatewayapi_keywords == {"foo", "bar"} and s.default_region == "NL" and s.stream == "hs:raw"


def test_secrets_never_show_in_reprs() -> None:
    s = Settings.from_env({"HOOKSTREAM_GATEWAYAPI_SECRET": "very-secret-1", "HOOKSTREAM_MX2_TOKEN": "very-secret-2",
                           "HOOKSTREAM_GATEWAYAPI_WEBHOOK_SECRET": "very-secret-3",
                           "HOOKSTREAM_DATABASE_URL": "postgresql://u:very-secret-4@db/h",
                           "HOOKSTREAM_REDIS_URL": "redis://:very-secret-5@r:6379/0"})
    text = repr(s) + str(s)
    assert "very-secret" not in text
    assert "hidden" in text


@pytest.mark.parametrize(("name", "value"), [
    ("HOOKSTREAM_MAX_BODY_BYTES", "lots"), ("HOOKSTREAM_MAX_BODY_BYTES", "0"),
    ("HOOKSTREAM_CM_ALLOWED_IPS", "not-a-network"), ("HOOKSTREAM_STREAM_RETENTION", "forever"),
    ("HOOKSTREAM_TRUSTED_PROXIES", "10.0.0.0/33"),
])
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("raw,seconds", [("3600", 3600), ("90s", 90), ("15m", 900), ("1.5h", 5400), ("7d", 604800),
                                         ("1w", 604800), ("24H", 86400)])
def test_duration_variables_take_the_one_grammar(raw: str, seconds: int) -> None:
    assert Settings.from_env({"HOOKSTREAM_STREAM_RETENTION": raw}).stream_retention_s == seconds


@pytest.mark.parametrize("raw", ["1 fortnight", "-5m", "h", "2h ago"])
def test_a_duration_variable_that_is_none_names_itself(raw: str) -> None:
    with pytest.raises(ConfigError, match="HOOKSTREAM_STREAM_RETENTION"):
        Settings.from_env({"HOOKSTREAM_STREAM_RETENTION": raw})
