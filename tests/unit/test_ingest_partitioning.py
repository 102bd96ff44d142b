"""Ingest picks each record's partition itself (one batch per partition): it must be the
partition aiokafka's default partitioner, and so any Kafka client, would pick."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from leadstage.transport.kafka import partition_of


def test_partitions_are_the_default_partitioners() -> None:
    keys = [b"", b"lead-1", b"lead-42", b"anon:\xc3\xbc", b"x" * 300] + [
        f"lead-{n}".encode() for n in range(500)
    ]
    for partitions in ([0], [0, 1, 2], list(range(12))):
        for _ in range(2):  # computed, then remembered
            for key in keys:
                assert partition_of(key, partitions) == DefaultPartitioner()(
                    key, partitions, partitions
                )


def test_partitions_match_the_java_clients_murmur2() -> None:
    # Kafka's own tests: Utils.murmur2("21") == -973932308 and ("foobar") == -790332482;
    # masked to 31 bits, 1173551340 and 1357151166, so among 1000 partitions 340 and 166.
    assert partition_of(b"21", range(1000)) == 340
    assert partition_of(b"foobar", range(1000)) == 166
