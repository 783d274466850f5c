"""Shared tokens and GatewayAPI signatures: pure checks that raise InvalidSignature."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import warnings
from collections.abc import Mapping
from urllib.parse import parse_qsl

import jwt

from shared.errors import InvalidSignature
from shared.settings import Secret

TOKEN_PARAM = "token"
TOKEN_PARAM_BYTES = TOKEN_PARAM.encode()


def _matches(candidate: str, secret: Secret) -> bool:
    # Compare with every value (rotation) so the time taken does not tell which one matched.
    found = False
    for value in secret.values:
        found |= hmac.compare_digest(candidate.encode(), value.encode())
    return found


def _basic_auth_password(authorization: str | None) -> str | None:
    if not authorization or not authorization[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def check_token(query: bytes, authorization: str | None, secret: Secret) -> None:
    """The provider's shared token, as query parameter `token` or as the basic-auth password."""
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == TOKEN_PARAM and _matches(value, secret):
            return
    password = _basic_auth_password(authorization)
    if password is not None and _matches(password, secret):
        return
    raise InvalidSignature("missing or wrong token")


def _is_token(part: bytes) -> bool:
    """Whether one `name=value` part of a query string is the token, read as check_token reads it.

    A name without `%` or `+` decodes to itself: compared as bytes, with no parsing (smsmode sends
    every field in the query string, so this runs for each of them on every request).
    """
    name = part.partition(b"=")[0]
    if b"%" not in name and b"+" not in name:
        return name == TOKEN_PARAM_BYTES
    return any(key == TOKEN_PARAM for key, _ in parse_qsl(part.decode("latin-1"), keep_blank_values=True))


def strip_token(query: bytes) -> bytes:
    """The query string without the `token` parameter, so the secret is never stored.

    Cut at the bytes: every other parameter stays exactly as sent (no decoding and re-encoding,
    which changed the bytes and failed on text outside Latin-1).
    """
    if not query:
        return query
    return b"&".join(part for part in query.split(b"&") if not _is_token(part))


# Claims GatewayAPI adds to the token beyond the payload (its published example carries both); the
# body may leave them out, and when it repeats one it must repeat it exactly.
GATEWAYAPI_EXTRA_CLAIMS = frozenset({"callback_url", "api"})


def check_gatewayapi_jwt(headers: Mapping[str, str], secret: Secret, body: bytes) -> None:
    """Legacy REST: `X-Gwapi-Signature` is an HS256 JWT whose claims are the payload; nothing else is accepted.

    GatewayAPI repeats the payload unsigned in the body, so the token alone binds nothing: the
    body must be the claims, field for field and type for type, or a captured token could carry
    another body (one that leaves out `time`, or says `1.0` where the token says `1`).
    """
    token = headers.get("x-gwapi-signature")
    if not token:
        raise InvalidSignature("X-Gwapi-Signature is missing")
    for key in secret.values:
        try:
            with warnings.catch_warnings():
                # Customers pick short keys (the official example uses "secret"); start-up logs it once.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(token, key, algorithms=["HS256"], options={"require": []})
        except jwt.InvalidTokenError:
            continue
        if not signed_body(claims, body):
            raise InvalidSignature("the body is not the payload X-Gwapi-Signature signs")
        return
    raise InvalidSignature("X-Gwapi-Signature does not verify")


def signed_body(claims: Mapping[str, object], body: bytes) -> bool:
    """Whether the body is a JSON object with exactly the claims' fields (the extra claims may be
    left out), each the same JSON value as its claim."""
    data = _json_object(body)
    if data is None:
        return False
    expected = {name: value for name, value in claims.items()
                if name not in GATEWAYAPI_EXTRA_CLAIMS or name in data}
    return same_json(expected, data)


def _json_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, or None: strict UTF-8, no repeated field, no NaN or Infinity.

    A body that two parsers could read differently (the worker uses another one) is refused.
    """
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_object_without_repeats,
                          parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, ambiguous, or nested beyond the parser
        return None
    return data if isinstance(data, dict) else None


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a field appears twice")
    return found


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def same_json(left: object, right: object) -> bool:
    """Equal as JSON values, types included at every depth: 1, 1.0 and true differ, "1" is not 1.

    Python's == says 1 == 1.0 == True. A loop, not recursion: a deep body fails, never overflows.
    """
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if type(a) is not type(b):
            return False
        if type(a) is dict:
            if a.keys() != b.keys():  # type: ignore[attr-defined]
                return False
            pending.extend((a[name], b[name]) for name in a)  # type: ignore[index]
        elif type(a) is list:
            if len(a) != len(b):  # type: ignore[arg-type]
                return False
            pending.extend(zip(a, b))  # type: ignore[call-overload]
        elif a != b:
            return False
    return True


def check_gatewayapi_hmac(headers: Mapping[str, str], body: bytes, secret: Secret) -> None:
    """Mobile Messaging API: `Signature: v1=<hex HMAC-SHA256(secret, raw body)>`, constant-time."""
    header = headers.get("signature", "")
    offered = [part.strip()[3:] for part in header.split(",") if part.strip().startswith("v1=")]
    if not offered:
        raise InvalidSignature("Signature header with a v1= value is missing")
    found = False
    for key in secret.values:
        expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode()
        for candidate in offered:
            # As bytes: compare_digest refuses str with non-ASCII characters (a header may hold any).
            found |= hmac.compare_digest(expected, candidate.lower().encode("utf-8", "replace"))
    if not found:
        raise InvalidSignature("Signature does not match the body")
