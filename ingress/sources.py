"""Which addresses may call each provider's routes.

A configured list replaces the default, which each provider names in its row of
`shared.settings.DEFAULT_ALLOWED_IPS`. GatewayAPI's default comes from DNS, resolved in the
background so the ingress listens at once; until the first answer the fallback list applies,
and a failed refresh keeps the last good set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping

from ingress.routes import FEEDS
from shared.settings import (
    DEFAULT_ALLOWED_IPS,
    GATEWAYAPI_DNS,
    LOOPBACK,
    IPAddress,
    NetList,
    Settings,
    default_allowed_ips,
)

log = logging.getLogger("hookstream.ingress")

Resolver = Callable[[], Awaitable[Iterable[str]]]


async def resolve_gatewayapi(names: Iterable[tuple[str, str]] = GATEWAYAPI_DNS, timeout_s: float = 5.0) -> set[str]:
    """A and AAAA records of GatewayAPI's published names; names that fail are skipped."""
    loop = asyncio.get_running_loop()
    found: set[str] = set()
    for name, record in names:
        family = socket.AF_INET if record == "A" else socket.AF_INET6
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=family), timeout_s)
        except (TimeoutError, OSError):
            continue
        found.update(str(info[4][0]) for info in infos)
    return found


class DnsAllowList:
    """The GatewayAPI list, refreshed from DNS by `run()`."""

    def __init__(self, fallback: NetList, resolver: Resolver, refresh_s: float) -> None:
        self.current = fallback
        self._resolver = resolver
        self._refresh_s = refresh_s

    async def refresh(self) -> None:
        try:
            addresses = [ipaddress.ip_network(a, strict=False) for a in await self._resolver()]
        except Exception as exc:  # DNS trouble must never take the ingress down
            log.warning("gatewayapi address refresh failed, keeping the last list: %s", type(exc).__name__)
            return
        if addresses:
            self.current = NetList(tuple(sorted(set(addresses), key=str)))
        else:
            log.warning("gatewayapi address refresh returned nothing, keeping the last list")

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)


class SourcePolicy:
    """The allow-list in force for each provider (local profile: loopback added everywhere)."""

    def __init__(self, settings: Settings, gatewayapi_dns: DnsAllowList,
                 defaults: Mapping[str, str] = DEFAULT_ALLOWED_IPS) -> None:
        self._gatewayapi_dns = gatewayapi_dns
        self._extra = NetList.parse(LOOPBACK) if settings.local_profile else NetList()
        # Every provider with a route: its configured list, else its own default (None: the DNS list).
        # A provider with neither stops the start-up here (ConfigError).
        self._lists: dict[str, NetList | None] = {}
        for provider in sorted({feed.provider for feed in FEEDS}):
            configured = settings.allowed_ips.get(provider)
            self._lists[provider] = configured if configured is not None else default_allowed_ips(provider, defaults)
        self._memo: dict[tuple[str, IPAddress | None], bool] = {}
        self._memo_dns = gatewayapi_dns.current

    def allowed(self, provider: str) -> NetList:
        listed = self._lists[provider]  # a provider without a route has no list, not another's
        base = listed if listed is not None else self._gatewayapi_dns.current
        return base.plus(self._extra) if self._extra.networks else base

    def admits(self, provider: str, client: IPAddress | None, memo_size: int = 4096) -> bool:
        """`allowed(provider).admits(client)`, remembered until the GatewayAPI list changes."""
        if self._memo_dns is not self._gatewayapi_dns.current or len(self._memo) >= memo_size:
            self._memo.clear()
            self._memo_dns = self._gatewayapi_dns.current
        key = (provider, client)
        decision = self._memo.get(key)
        if decision is None:
            decision = self._memo[key] = self.allowed(provider).admits(client)
        return decision
