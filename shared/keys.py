"""Dedupe keys: the provider's own id where it has one, else a stable hash of identifying fields."""

from __future__ import annotations

import hashlib

_SEP = "\x1f"


def natural_key(provider: str, kind: str, provider_id: object) -> str:
    return f"{provider}:{kind}:{provider_id}"


def hashed_key(provider: str, kind: str, *parts: object) -> str:
    """Hash of the parts in order; None and "" hash alike, so a missing field is stable."""
    text = _SEP.join("" if part is None else str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{provider}:{kind}:h:{digest}"
