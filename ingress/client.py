"""Who sent the request: the TCP peer, or the right-most untrusted X-Forwarded-For entry.

Pure functions over strings, following the contract's walk: entries left of the client are never
read, and a non-address met before the client means there is no client address (403 where a list
applies). uvicorn's own proxy handling is off, since it would believe the left-most entry.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from shared.settings import IPAddress, NetList


def parse_address(text: str) -> IPAddress | None:
    """An address from `a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]` or `[v6]:port`; IPv4-mapped unmapped."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: NetList) -> IPAddress | None:
    """The client address, or None when it cannot be determined."""
    peer_address = parse_address(peer) if peer else None
    if peer_address is None or not trusted.admits(peer_address):
        return peer_address
    entries = [entry for line in forwarded_for for entry in line.split(",")]
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return None
        if not trusted.admits(address):
            return address
    return peer_address


class ClientAddresses:
    """`client_address` remembered per (peer, X-Forwarded-For): providers call from a handful of
    addresses, and parsing them on every request was a visible share of the ingress's CPU. The
    memo is bounded: when full it starts over, so a flood of new addresses costs only the parse."""

    def __init__(self, trusted: NetList, size: int = 4096) -> None:
        self._trusted = trusted
        self._size = size
        self._memo: dict[tuple[str | None, tuple[str, ...]], IPAddress | None] = {}

    def resolve(self, peer: str | None, forwarded_for: tuple[str, ...]) -> IPAddress | None:
        key = (peer, forwarded_for)
        try:
            return self._memo[key]
        except KeyError:
            pass
        address = client_address(peer, forwarded_for, self._trusted)
        if len(self._memo) >= self._size:
            self._memo.clear()
        self._memo[key] = address
        return address
