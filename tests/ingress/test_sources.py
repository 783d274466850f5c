"""Allow-list decisions per provider, remembered until GatewayAPI's DNS list changes; each provider's
default is its own row of the defaults table."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from ingress.sources import DnsAllowList, SourcePolicy
from shared import settings as settings_module
from shared.errors import ConfigError
from shared.settings import CM_RANGES, DEFAULT_ALLOWED_IPS, FROM_DNS, NetList, Settings, default_allowed_ips

OLD, NEW = "35.241.147.191", "34.76.1.2"


def test_decisions_follow_a_dns_refresh() -> None:
    answers = [[OLD], [NEW]]

    async def resolver() -> list[str]:
        return answers.pop(0)

    dns = DnsAllowList(NetList(), resolver, refresh_s=60)
    policy = SourcePolicy(Settings(), dns)
    old, new = ipaddress.ip_address(OLD), ipaddress.ip_address(NEW)
    assert not policy.admits("gatewayapi", old)
    asyncio.run(dns.refresh())
    assert policy.admits("gatewayapi", old) and not policy.admits("gatewayapi", new)
    asyncio.run(dns.refresh())
    assert policy.admits("gatewayapi", new) and not policy.admits("gatewayapi", old)


def test_decisions_equal_the_lists() -> None:
    policy = SourcePolicy(Settings(), DnsAllowList(NetList(), lambda: None, 60))  # type: ignore[arg-type]
    for address in ("31.169.56.10", "203.0.113.5", "::1"):
        ip = ipaddress.ip_address(address)
        for provider in ("cm", "smsmode", "mx2", "gatewayapi"):
            for _ in range(2):
                assert policy.admits(provider, ip) == policy.allowed(provider).admits(ip)
    assert policy.admits("mx2", None) and not policy.admits("cm", None)


def test_defaults_follow_the_contract() -> None:
    """Unset lists: CM its published ranges, GatewayAPI its DNS names, smsmode and Mx2 any address."""
    dns = DnsAllowList(NetList.parse("35.241.147.191/32"), lambda: None, 60)  # type: ignore[arg-type]
    policy = SourcePolicy(Settings(), dns)
    assert policy.allowed("cm") == NetList.parse(CM_RANGES)
    assert policy.allowed("gatewayapi") is dns.current
    assert policy.allowed("smsmode").any_address and policy.allowed("mx2").any_address
    assert default_allowed_ips("gatewayapi") is None and default_allowed_ips("cm") == NetList.parse(CM_RANGES)


def test_a_set_list_replaces_the_default() -> None:
    settings = Settings(allowed_ips={"smsmode": NetList.parse("198.51.100.0/24"), "gatewayapi": NetList.parse("*")})
    policy = SourcePolicy(settings, DnsAllowList(NetList(), lambda: None, 60))  # type: ignore[arg-type]
    assert not policy.admits("smsmode", ipaddress.ip_address("203.0.113.5"))
    assert policy.admits("smsmode", ipaddress.ip_address("198.51.100.7")) and policy.admits("gatewayapi", None)


def test_a_provider_without_a_default_stops_the_start_not_gets_gatewayapis_list() -> None:
    dns = DnsAllowList(NetList.parse("*"), lambda: None, 60)  # type: ignore[arg-type]
    table = {name: value for name, value in DEFAULT_ALLOWED_IPS.items() if name != "smsmode"}
    with pytest.raises(ConfigError, match="HOOKSTREAM_SMSMODE_ALLOWED_IPS"):
        SourcePolicy(Settings(), dns, defaults=table)
    # …unless its own list is set
    own = NetList.parse("198.51.100.0/24")
    assert SourcePolicy(Settings(allowed_ips={"smsmode": own}), dns, defaults=table).allowed("smsmode") == own
    with pytest.raises(ConfigError, match="HOOKSTREAM_NEWCO_ALLOWED_IPS"):
        default_allowed_ips("newco")


def test_settings_refuse_a_provider_without_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_ALLOWED_IPS", {"cm": CM_RANGES, "gatewayapi": FROM_DNS, "mx2": "*"})
    with pytest.raises(ConfigError, match="HOOKSTREAM_SMSMODE_ALLOWED_IPS"):
        Settings.from_env({})
    assert Settings.from_env({"HOOKSTREAM_SMSMODE_ALLOWED_IPS": "*"}).allowed_ips["smsmode"] == NetList.parse("*")
