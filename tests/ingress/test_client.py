"""The client-address walk, table-driven."""

from __future__ import annotations

import ipaddress

import pytest

from ingress.client import ClientAddresses, client_address, parse_address
from shared.settings import NetList

TRUSTED = NetList.parse("10.0.0.0/8,fd00::/8")


@pytest.mark.parametrize(
    ("label", "peer", "xff", "expected"),
    [
        ("untrusted peer ignores the header", "203.0.113.9", ["31.169.56.1"], "203.0.113.9"),
        ("trusted peer, no header", "10.0.0.1", [], "10.0.0.1"),
        ("trusted peer, one entry", "10.0.0.1", ["31.169.56.1"], "31.169.56.1"),
        ("right-most untrusted wins", "10.0.0.1", ["6.6.6.6, 31.169.56.1"], "31.169.56.1"),
        ("trusted hops are skipped", "10.0.0.1", ["6.6.6.6, 31.169.56.1, 10.1.1.1"], "31.169.56.1"),
        ("header lines are joined in order", "10.0.0.1", ["6.6.6.6", "31.169.56.1, 10.2.2.2"], "31.169.56.1"),
        ("only trusted entries → peer", "10.0.0.1", ["10.1.1.1, 10.2.2.2"], "10.0.0.1"),
        ("port stripped", "10.0.0.1", ["31.169.56.1:4711"], "31.169.56.1"),
        ("bracketed v6 with port", "10.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("bare v6", "10.0.0.1", ["2001:db8::2"], "2001:db8::2"),
        ("v4-mapped unmapped", "10.0.0.1", ["::ffff:31.169.56.1"], "31.169.56.1"),
        ("v4-mapped peer unmapped", "::ffff:203.0.113.9", [], "203.0.113.9"),
        ("garbage before the client → none", "10.0.0.1", ["31.169.56.1, garbage"], None),
        ("garbage left of the client is never read", "10.0.0.1", ["garbage, 31.169.56.1"], "31.169.56.1"),
        ("empty entry → none", "10.0.0.1", ["31.169.56.1, "], None),
        ("v6 trusted proxy", "fd00::1", ["31.169.56.1"], "31.169.56.1"),
        ("no peer", None, ["31.169.56.1"], None),
    ],
)
def test_client_address(label: str, peer: str | None, xff: list[str], expected: str | None) -> None:
    result = client_address(peer, xff, TRUSTED)
    assert result == (ipaddress.ip_address(expected) if expected else None), label


@pytest.mark.parametrize("text", ["", "abc", "1.2.3.4.5", "[::1", "999.1.1.1", "\x00"])
def test_parse_address_rejects_garbage(text: str) -> None:
    assert parse_address(text) is None


def test_memoized_addresses_equal_the_walk() -> None:
    trusted = NetList.parse("10.0.0.0/8")
    clients = ClientAddresses(trusted, size=3)
    cases = [("10.0.0.1", ("1.2.3.4",)), ("10.0.0.1", ("junk",)), ("5.6.7.8", ()), ("10.0.0.1", ("1.2.3.4, 10.0.0.9",)),
             (None, ()), ("10.0.0.1", ("1.2.3.4",))]
    for _ in range(2):
        for peer, forwarded in cases:
            assert clients.resolve(peer, forwarded) == client_address(peer, forwarded, trusted)
    assert len(clients._peers) <= 3 and len(clients._forwarded) <= 3


def test_the_memo_never_keeps_a_header_it_did_not_need_or_a_long_one() -> None:
    trusted = NetList.parse("10.0.0.0/8")
    clients = ClientAddresses(trusted, header_bytes=256)
    huge = ("1.2.3.4, " * 20_000,)
    for i in range(50):
        assert clients.resolve("203.0.113.9", (f"{i}.{huge[0]}",)) == ipaddress.ip_address("203.0.113.9")
        assert clients.resolve("10.0.0.1", (f"5.6.7.{i}", *huge)) == client_address("10.0.0.1", (f"5.6.7.{i}", *huge),
                                                                                      trusted)
    assert list(clients._forwarded) == []  # untrusted peers: the header is never a key; long headers: not kept
    assert list(clients._peers) == ["203.0.113.9", "10.0.0.1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("fe80::1%eth0", "fe80::1"), ("[fe80::1%eth0]:443", "fe80::1"), ("[fe80::1%" + "x" * 10_000 + "]", "fe80::1"),
    ("1.2.3.4%x", None), ("%", None),
])
def test_zones_are_dropped(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


def test_token_detection_reads_names_as_the_query_parser_does() -> None:
    """The byte comparison for plain names agrees with parse_qsl on names that need decoding too."""
    from urllib.parse import parse_qsl

    from ingress.auth import _is_token

    for part in (b"token=x", b"token", b"tokens=x", b"%74oken=x", b"t%6Fken", b"to+ken=1", b"=token", b"token=%20",
                 b"Token=x", b"numero=%2B33612345678", b"", b"%", b"\xfftoken=1"):
        expected = any(k == "token" for k, _ in parse_qsl(part.decode("latin-1"), keep_blank_values=True))
        assert _is_token(part) == expected, part
