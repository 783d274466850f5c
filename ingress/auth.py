"""Shared tokens and GatewayAPI signatures: pure checks that raise InvalidSignature."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import warnings
from typing import Mapping
from urllib.parse import parse_qsl, urlencode

import jwt

from shared.errors import InvalidSignature
from shared.settings import Secret

TOKEN_PARAM = "token"


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


def strip_token(query: bytes) -> bytes:
    """The query string without the `token` parameter, so the secret is never stored."""
    if TOKEN_PARAM.encode() not in query:
        return query
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k != TOKEN_PARAM], encoding="latin-1").encode("latin-1")


def check_gatewayapi_jwt(headers: Mapping[str, str], secret: Secret) -> None:
    """Legacy REST: `X-Gwapi-Signature` is an HS256 JWT over the payload; nothing else is accepted."""
    token = headers.get("x-gwapi-signature")
    if not token:
        raise InvalidSignature("X-Gwapi-Signature is missing")
    for key in secret.values:
        try:
            with warnings.catch_warnings():
                # Customers pick short keys (the official example uses "secret"); start-up logs it once.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                jwt.decode(token, key, algorithms=["HS256"], options={"require": []})
            return
        except jwt.InvalidTokenError:
            continue
    raise InvalidSignature("X-Gwapi-Signature does not verify")


def check_gatewayapi_hmac(headers: Mapping[str, str], body: bytes, secret: Secret) -> None:
    """Mobile Messaging API: `Signature: v1=<hex HMAC-SHA256(secret, raw body)>`, constant-time."""
    header = headers.get("signature", "")
    offered = [part.strip()[3:] for part in header.split(",") if part.strip().startswith("v1=")]
    if not offered:
        raise InvalidSignature("Signature header with a v1= value is missing")
    found = False
    for key in secret.values:
        expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        for candidate in offered:
            found |= hmac.compare_digest(expected, candidate.lower())
    if not found:
        raise InvalidSignature("Signature does not match the body")
