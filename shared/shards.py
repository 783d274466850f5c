"""The raw stream's shards: their keys, and hash tags that put them on different Redis Cluster primaries.

With one shard (the default without a cluster) the stream is `<prefix>:raw`, exactly the key of a
single-stream deployment. With N > 1, shard i's stream is `<prefix>:raw:{tag}`, where `tag` is the
first of "0", "1", "2", ... whose slot (CRC16 mod 16384, as Redis Cluster computes it) falls in the
i-th N-th of the slots. `redis-cli --cluster create` gives each of P primaries one P-th of the slots
in order, so N = P shards land one on each primary, and N = k·P shards k on each. Everything that
belongs with a shard carries its tag (a key on the same slot as the stream); its consumer group is
inside the stream. No command ever needs two shards' keys.

Pure functions: every process computes the same layout from the prefix and the count. Changing the
count changes the keys: drain the streams (lag and pending 0) before changing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count as numbers

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SLOTS = REDIS_CLUSTER_HASH_SLOTS  # 16384


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    stream: str  # the raw stream's key (its consumer group lives in it)
    inflight_key: str  # the entry → job map of this shard's entries (on the queue Redis)

    @property
    def label(self) -> str:
        """The metrics' `shard` label."""
        return str(self.index)


def slot(key: str) -> int:
    """The Redis Cluster slot of `key` (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))


def hash_tag(index: int, total: int) -> str:
    """The first decimal tag whose slot falls in the `index`-th of `total` equal ranges of slots."""
    if not 0 <= index < total:
        raise ValueError(f"shard {index} of {total} does not exist")
    low, high = index * SLOTS // total, (index + 1) * SLOTS // total
    return next(tag for tag in map(str, numbers()) if low <= slot(tag) < high)


def layout(prefix: str, total: int) -> tuple[Shard, ...]:
    """The `total` shards of the raw stream under `prefix`."""
    if total < 1:
        raise ValueError(f"{total} shards: at least one is needed")
    if total == 1:
        return (Shard(0, f"{prefix}:raw", f"{prefix}:inflight"),)
    tags = [hash_tag(i, total) for i in range(total)]
    return tuple(Shard(i, f"{prefix}:raw:{{{tag}}}", f"{prefix}:inflight:{{{tag}}}") for i, tag in enumerate(tags))
