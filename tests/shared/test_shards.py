"""The shards' keys and hash tags (shared/shards.py), and the settings that choose them."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from shared import connections
from shared.errors import ConfigError
from shared.settings import Settings
from shared.shards import SLOTS, hash_tag, layout, slot


def test_one_shard_keeps_the_single_streams_keys() -> None:
    (only,) = layout("hookstream", 1)
    assert (only.index, only.stream, only.inflight_key, only.label) == (
        0, "hookstream:raw", "hookstream:inflight", "0")
    assert only.stream == Settings().stream and only.inflight_key == Settings().inflight_key


@pytest.mark.parametrize("total", [2, 3, 4, 6, 9])
def test_shard_i_lands_in_the_ith_range_of_slots(total: int) -> None:
    shards = layout("hookstream", total)
    assert [s.index for s in shards] == list(range(total))
    for shard in shards:
        low, high = shard.index * SLOTS // total, (shard.index + 1) * SLOTS // total
        assert low <= slot(shard.stream) < high
        assert slot(shard.inflight_key) == slot(shard.stream), "a shard's keys share its slot"
    assert len({s.stream for s in shards}) == total


def test_three_shards_on_the_three_primaries_of_the_default_layout() -> None:
    # redis-cli --cluster create with three primaries: 0-5460, 5461-10922, 10923-16383
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    owners = [next(i for i, (lo, hi) in enumerate(ranges) if lo <= slot(s.stream) <= hi)
              for s in layout("hookstream", 3)]
    assert owners == [0, 1, 2]


def test_tags_are_deterministic_and_match_redis() -> None:
    assert [hash_tag(i, 3) for i in range(3)] == [hash_tag(i, 3) for i in range(3)]
    assert slot("hookstream:raw:{3}") == key_slot(b"3") == slot("{3}")
    with pytest.raises(ValueError):
        hash_tag(3, 3)
    with pytest.raises(ValueError):
        layout("hookstream", 0)


CLUSTER = {"HOOKSTREAM_REDIS_CLUSTER": "1", "HOOKSTREAM_QUEUE_REDIS_URL": "redis://queue:6379/0",
           "HOOKSTREAM_REDIS_URL": "redis://:pw@10.0.0.1:7000/0,10.0.0.2:7001,redis://10.0.0.3:7002"}


def test_cluster_settings() -> None:
    settings = Settings.from_env(CLUSTER)
    assert settings.redis_cluster and settings.stream_shards is None
    assert settings.redis_cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002))
    assert settings.redis_url == "redis://:pw@10.0.0.1:7000/0"  # the username and password of all
    assert Settings.from_env({**CLUSTER, "HOOKSTREAM_STREAM_SHARDS": "4"}).stream_shards == 4
    assert Settings.from_env({}).stream_shards is None and not Settings.from_env({}).redis_cluster


@pytest.mark.parametrize(("env", "message"), [
    ({**CLUSTER, "HOOKSTREAM_QUEUE_REDIS_URL": ""}, "needs HOOKSTREAM_QUEUE_REDIS_URL"),
    ({**CLUSTER, "HOOKSTREAM_REDIS_URL": "redis://10.0.0.1:7000/2"}, "only db 0"),
    ({**CLUSTER, "HOOKSTREAM_REDIS_URL": "10.0.0.1:7000"}, "must be a URL"),
    ({**CLUSTER, "HOOKSTREAM_REDIS_URL": "unix:///tmp/r.sock"}, "cannot name a Redis Cluster node"),
    ({**CLUSTER, "HOOKSTREAM_REDIS_URL": ""}, "at least one node"),
    ({**CLUSTER, "HOOKSTREAM_QUEUE_REDIS_URL": "redis://a:1,redis://b:2"}, "names one Redis"),
    ({**CLUSTER, "HOOKSTREAM_STREAM_SHARDS": "0"}, "HOOKSTREAM_STREAM_SHARDS"),
    ({**CLUSTER, "HOOKSTREAM_REDIS_CLUSTER": "maybe"}, "HOOKSTREAM_REDIS_CLUSTER"),
    ({"HOOKSTREAM_REDIS_URL": "redis://a:1/0,redis://b:2"}, "HOOKSTREAM_REDIS_CLUSTER=1"),
])
def test_combinations_that_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_with_a_cluster_the_sentinels_manage_the_queue_redis() -> None:
    settings = Settings.from_env({**CLUSTER, "HOOKSTREAM_REDIS_SENTINELS": "10.0.0.9:26379"})
    queue = connections.queue_redis(settings)
    try:
        assert isinstance(queue, connections._SentinelRedis)  # found through the Sentinels
        assert queue.connection_pool.service_name == settings.redis_sentinel_service
    finally:
        queue.close()
    assert not connections.queue_shares_stream_redis(settings)
