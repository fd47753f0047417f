"""The query API finds an order's partition with the producers' partitioner: Kafka's murmur2."""
from __future__ import annotations

import pytest

from domain.partitioning import murmur2, partition_for


def signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


@pytest.mark.parametrize(("data", "expected"), [
    # the Java client's own test vectors (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert signed(murmur2(data)) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    assert partition_for("foobar", 6) == (-790332482 & 0x7FFFFFFF) % 6
    assert {partition_for(f"order-{i}", 6) for i in range(200)} == set(range(6))
