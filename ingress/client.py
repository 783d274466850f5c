"""Who sent the request: the TCP peer, or the right-most untrusted X-Forwarded-For entry.

Pure functions over strings, following the contract's walk: entries left of the client are never
read, and a non-address met before the client means there is no client address (403 where a list
applies). uvicorn's own proxy handling is off, since it would believe the left-most entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TypeVar

from shared.settings import IPAddress, NetList


def parse_address(text: str) -> IPAddress | None:
    """An address from `a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]` or `[v6]:port`; IPv4-mapped unmapped."""
    text = _without_zone(text.strip())
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


def _without_zone(text: str) -> str:
    """`fe80::1%eth0` → `fe80::1`, in brackets too: a zone names a local interface, not a host, and
    `ipaddress` would keep one of any length in the address (and so in the stored record)."""
    start = text.find("%")
    if start < 0 or ":" not in text[:start]:  # IPv6 only: `1.2.3.4%x` stays a non-address
        return text
    end = text.find("]", start)
    return text[:start] + (text[end:] if end >= 0 else "")


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
    """`client_address`, remembered: providers call from a handful of addresses, and parsing them on
    every request was a visible share of the ingress's CPU.

    The memos are bounded (when full they start over) and keyed on what the walk reads: the peer,
    and the X-Forwarded-For lines only behind a trusted proxy and only when short, so a sender
    cannot make them hold thousands of copies of a huge header.
    """

    def __init__(self, trusted: NetList, size: int = 4096, header_bytes: int = 256) -> None:
        self._trusted = trusted
        self._size = size
        self._header_bytes = header_bytes
        self._peers: dict[str | None, IPAddress | None] = {}
        self._forwarded: dict[tuple[str | None, tuple[str, ...]], IPAddress | None] = {}

    def resolve(self, peer: str | None, forwarded_for: tuple[str, ...]) -> IPAddress | None:
        peer_address = _remember(self._peers, peer, self._size, lambda: parse_address(peer) if peer else None)
        if peer_address is None or not forwarded_for or not self._trusted.admits(peer_address):
            return peer_address
        if sum(map(len, forwarded_for)) > self._header_bytes:
            return client_address(peer, forwarded_for, self._trusted)
        return _remember(self._forwarded, (peer, forwarded_for), self._size,
                         lambda: client_address(peer, forwarded_for, self._trusted))


K = TypeVar("K")
V = TypeVar("V")


def _remember(memo: dict[K, V], key: K, size: int, compute: Callable[[], V]) -> V:
    try:
        return memo[key]
    except KeyError:
        pass
    if len(memo) >= size:
        memo.clear()
    value = memo[key] = compute()
    return value
