"""One route per provider feed; the worker parses by (provider, feed)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Signature(StrEnum):
    NONE = "none"
    GATEWAYAPI_JWT = "gatewayapi-jwt"
    GATEWAYAPI_HMAC = "gatewayapi-hmac"


@dataclass(frozen=True, slots=True)
class Feed:
    path: str
    provider: str
    feed: str
    methods: tuple[str, ...] = ("POST",)
    signature: Signature = Signature.NONE


FEEDS: tuple[Feed, ...] = (
    Feed("/webhooks/cm/mo", "cm", "mo", ("GET", "POST")),
    Feed("/webhooks/cm/events", "cm", "events"),
    # CM sends status reports by POST (JSON or XML) or, if the account chose it, by GET.
    Feed("/webhooks/cm/status", "cm", "status", ("GET", "POST")),
    Feed("/webhooks/smsmode/mo", "smsmode", "mo", ("GET", "POST")),
    Feed("/webhooks/smsmode/status", "smsmode", "status", ("GET", "POST")),
    Feed("/webhooks/mx2", "mx2", "webhook"),
    Feed("/webhooks/gatewayapi", "gatewayapi", "rest", signature=Signature.GATEWAYAPI_JWT),
    Feed("/webhooks/gatewayapi/events", "gatewayapi", "events", signature=Signature.GATEWAYAPI_HMAC),
)
