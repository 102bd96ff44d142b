"""The engine's batch log line names each partition's own offset range."""

from __future__ import annotations

from leadstage.transport.base import Record
from leadstage_engine.consumer import offset_ranges


def record(partition: int, offset: int, topic: str = "t.touchpoints.v1") -> Record:
    return Record(topic, partition, offset, b"lead", b"{}")


def test_one_partition_keeps_the_plain_form() -> None:
    assert offset_ranges([record(4, 10), record(4, 11), record(4, 12)]) == (
        "t.touchpoints.v1",
        "4",
        "10..12",
    )


def test_a_batch_over_several_partitions_gives_each_its_range() -> None:
    # As getmany hands them out: partition 2's offsets are far above partition 0's.
    batch = [record(2, 177162), record(2, 177213), record(0, 174901), record(0, 175000)]

    assert offset_ranges(batch) == (
        "t.touchpoints.v1",
        "2,0",
        "2:177162..177213,0:174901..175000",
    )


def test_several_topics_name_the_topic_with_the_partition() -> None:
    batch = [record(0, 5, "a"), record(0, 9, "b"), record(0, 6, "a")]

    assert offset_ranges(batch) == ("a,b", "a:0,b:0", "a:0:5..6,b:0:9..9")
