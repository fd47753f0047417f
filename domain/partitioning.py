"""Which partition holds an aggregate's events: the producers' partitioner, computed without Kafka.

Every producer of the pipeline uses librdkafka's `murmur2_random`, the Java client's default: a keyed
record goes to `(murmur2(key) & 0x7fffffff) % partitions`. The query API uses the same function to find
the partition of an order without asking Kafka.
"""
from __future__ import annotations

SEED = 0x9747B28C
M = 0x5BD1E995
MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit value."""
    length = len(data)
    h = (SEED ^ length) & MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * M) & MASK
        k ^= k >> 24
        k = (k * M) & MASK
        h = ((h * M) & MASK) ^ k
    rest = data[whole:]
    if len(rest) == 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h ^= rest[0]
        h = (h * M) & MASK
    h ^= h >> 13
    h = (h * M) & MASK
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    """The partition a record keyed by `key` (UTF-8) goes to among `partitions`."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
