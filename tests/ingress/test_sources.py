"""Allow-list decisions per provider, remembered until GatewayAPI's DNS list changes."""

from __future__ import annotations

import asyncio
import ipaddress

from ingress.sources import DnsAllowList, SourcePolicy
from shared.settings import NetList, Settings

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
