"""Fixtures of the high-availability tests: a Redis primary with two replicas behind three Sentinels.

`sentinels` is one group per module, for tests that only read and write; `own_sentinels` is a
group of the test's own, which it may fail over or kill. `sentinel_settings(group)` gives the
settings every process would get: the Sentinels' addresses, and a Redis URL whose host and port
lead nowhere (the Sentinels name the server) but whose password and db number are the ones to use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.settings import Settings
from tests.ha.servers import PASSWORD, SERVICE, SentinelGroup

NOWHERE = "192.0.2.1:1"  # TEST-NET-1: nothing answers there; the URL's host and port must be ignored
DB = 3


def sentinel_settings(group: SentinelGroup, *, password: str = PASSWORD, db: int = DB,
                      key_prefix: str = "ha") -> Settings:
    env = {"HOOKSTREAM_REDIS_URL": f"redis://:{password}@{NOWHERE}/{db}",
           "HOOKSTREAM_REDIS_SENTINELS": group.addresses, "HOOKSTREAM_REDIS_SENTINEL_SERVICE": SERVICE,
           "HOOKSTREAM_KEY_PREFIX": key_prefix}
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelGroup]:
    group = SentinelGroup().start()
    yield group
    group.stop()


@pytest.fixture
def own_sentinels() -> Iterator[SentinelGroup]:
    group = SentinelGroup().start()
    yield group
    group.stop()
