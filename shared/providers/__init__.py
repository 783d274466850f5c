"""The provider registry: one module per provider, all meeting `base.Provider`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shared.providers import cm, gatewayapi, mx2, smsmode
from shared.providers.base import ParseContext, Provider

REGISTRY: Mapping[str, Provider] = MappingProxyType(
    {module.NAME: module for module in (cm, smsmode, mx2, gatewayapi)}
)

__all__ = ["REGISTRY", "ParseContext", "Provider"]
