"""The ingress's routes, the provider registry and the settings name the same providers and feeds:
a route whose feed no module parses would only ever make dead letters, and a feed without a route
never arrives."""

from __future__ import annotations

from ingress.routes import FEEDS
from shared.providers import REGISTRY
from shared.settings import DEFAULT_ALLOWED_IPS, PROVIDERS


def test_routes_and_registry_name_the_same_feeds() -> None:
    routed = {(feed.provider, feed.feed) for feed in FEEDS}
    parsed = {(name, feed) for name, module in REGISTRY.items() for feed in module.FEEDS}
    assert routed == parsed, f"only routed: {sorted(routed - parsed)}; only parsed: {sorted(parsed - routed)}"


def test_every_provider_has_its_settings_and_its_default_allow_list() -> None:
    assert set(PROVIDERS) == set(REGISTRY) == {feed.provider for feed in FEEDS} == set(DEFAULT_ALLOWED_IPS)


def test_each_route_is_one_feed() -> None:
    assert len({feed.path for feed in FEEDS}) == len(FEEDS)
    assert len({(feed.provider, feed.feed) for feed in FEEDS}) == len(FEEDS)
