"""Both transports against the real servers: durable publish, ordered keyed reads,
positions from PostgreSQL, and a clear failure when the broker is unreachable."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection, Mapping, Sequence

import pytest

from leadstage.db.session import SessionFactory
from leadstage.settings import ServiceSettings
from leadstage.transport import create_publisher, create_source, create_topics
from leadstage.transport.base import (
    OutgoingRecord,
    Record,
    RecordSource,
    TopicPartition,
    TransportUnavailableError,
)
from leadstage.transport.kafka import KafkaPublisher, delete_topics_with_prefix, ensure_topics
from leadstage.transport.pglog import partition_for
from tests.conftest import Environment

TRANSPORTS = ["kafka", "postgres"]


class StoredPositions:
    """An AssignmentListener with positions given up front (as PostgreSQL would)."""

    def __init__(self, positions: Mapping[TopicPartition, int] | None = None) -> None:
        self.positions = dict(positions or {})
        self.assigned: set[TopicPartition] = set()

    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.assigned |= partitions
        return {tp: o for tp, o in self.positions.items() if tp in partitions}

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self.assigned -= partitions


async def read_all(
    source: RecordSource,
    expected: int,
    within: float = 20,
    excluding: Collection[TopicPartition] = (),
) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + within
    while len(records) < expected and time.monotonic() < deadline:
        records += await source.getmany(timeout_ms=200, max_records=1000, excluding=excluding)
    return records


async def fresh_topics(
    environment: Environment,
    sessions: SessionFactory,
    transport: str,
    *,
    partitions: int | None = None,
) -> ServiceSettings:
    """Settings with topics of their own (a new prefix), created."""
    update: dict[str, object] = {
        "topic_prefix": f"{environment.topic_prefix}{secrets.token_hex(3)}."
    }
    if partitions is not None:
        update["topic_partitions"] = partitions
    settings = environment.settings(transport).model_copy(update=update)
    await create_topics(settings, sessions)
    return settings


async def publish_all(
    settings: ServiceSettings,
    sessions: SessionFactory,
    *batches: Sequence[OutgoingRecord],
    topic: str | None = None,
) -> None:
    """Each batch in one publish, to ``topic`` (the touchpoints topic by default)."""
    publisher = create_publisher(settings, sessions)
    await publisher.start()
    try:
        for batch in batches:
            await publisher.publish(topic or settings.touchpoints_topic, batch)
    finally:
        await publisher.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_keyed_records_keep_their_order_per_key(
    environment: Environment, sessions: SessionFactory, transport: str
) -> None:
    settings = await fresh_topics(environment, sessions, transport)
    keys = [f"lead-{i}".encode() for i in range(10)]
    batch = [
        OutgoingRecord(key=k, value=f"{k.decode()}:{n}".encode()) for n in range(20) for k in keys
    ]
    await publish_all(settings, sessions, batch[:100], batch[100:])

    source = create_source(settings, sessions, topic=settings.touchpoints_topic, group="g")
    await source.start(StoredPositions())
    try:
        records = await read_all(source, len(batch))
    finally:
        await source.stop()

    assert len(records) == len(batch)
    for key in keys:
        mine = [r for r in records if r.key == key]
        assert [r.value for r in mine] == [f"{key.decode()}:{n}".encode() for n in range(20)]
        assert len({r.partition for r in mine}) == 1
        # Both transports place a key on the same partition (Kafka's murmur2).
        assert mine[0].partition == partition_for(key, settings.topic_partitions)
    for partition in {r.partition for r in records}:
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))  # dense, in order


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_source_leaves_out_the_partitions_it_is_told_to(
    environment: Environment, sessions: SessionFactory, transport: str
) -> None:
    """The engine fetches a second lane's batch from partitions the first lane did not
    take (``excluding``): none of its records may come from those."""
    settings = await fresh_topics(environment, sessions, transport, partitions=3)
    batch = [OutgoingRecord(key=f"lead-{i}".encode(), value=b"v") for i in range(60)]
    await publish_all(settings, sessions, batch)
    topic = settings.touchpoints_topic
    excluded = TopicPartition(topic, partition_for(b"lead-0", 3))
    expected = sum(1 for r in batch if partition_for(r.key, 3) != excluded.partition)
    source = create_source(settings, sessions, topic=topic, group=f"g-{secrets.token_hex(3)}")
    await source.start(StoredPositions())
    try:
        records = await read_all(source, expected, excluding={excluded})
        assert excluded not in {r.topic_partition for r in records}
        assert len(records) == expected
        # Nothing of the excluded partition was skipped: asked for, it is all there.
        rest = await read_all(source, len(batch) - expected)
        assert {r.topic_partition for r in rest} == {excluded}
        assert len(rest) == len(batch) - expected
    finally:
        await source.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_source_resumes_from_the_stored_positions(
    environment: Environment, sessions: SessionFactory, transport: str
) -> None:
    settings = await fresh_topics(environment, sessions, transport, partitions=1)
    await publish_all(
        settings, sessions, [OutgoingRecord(key=b"k", value=str(n).encode()) for n in range(10)]
    )
    topic = settings.touchpoints_topic
    source = create_source(settings, sessions, topic=topic, group=f"g-{secrets.token_hex(3)}")
    await source.start(StoredPositions({TopicPartition(topic, 0): 6}))
    try:
        records = await read_all(source, 4)
    finally:
        await source.stop()
    assert [r.value for r in records] == [b"6", b"7", b"8", b"9"]


async def test_publishing_while_the_log_is_concurrently_appended_keeps_offsets_dense(
    environment: Environment, sessions: SessionFactory
) -> None:
    settings = await fresh_topics(environment, sessions, "postgres", partitions=2)
    publisher = create_publisher(settings, sessions)

    async def writer(n: int) -> None:
        for i in range(10):
            await publisher.publish(
                settings.touchpoints_topic,
                [
                    OutgoingRecord(key=f"k{n}-{i}".encode(), value=b"v"),
                    OutgoingRecord(key=f"j{n}-{i}".encode(), value=b"v"),
                ],
            )

    try:
        await asyncio.gather(*(writer(n) for n in range(4)))
    finally:
        await publisher.stop()
    source = create_source(settings, sessions, topic=settings.touchpoints_topic, group="g")
    await source.start(StoredPositions())
    try:
        records = await read_all(source, 80)
    finally:
        await source.stop()
    assert len(records) == 80
    for partition in (0, 1):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))


async def test_an_unreachable_broker_is_reported_not_hung() -> None:
    publisher = KafkaPublisher("127.0.0.1:1", timeout_seconds=1.0)
    await publisher.start()  # starts anyway: the service reports not-ready
    started = time.monotonic()
    with pytest.raises(TransportUnavailableError):
        await publisher.publish("t", [OutgoingRecord(key=b"k", value=b"v")])
    with pytest.raises(TransportUnavailableError):
        await publisher.ping()
    assert time.monotonic() - started < 10
    await publisher.stop()


async def test_a_run_deletes_its_own_topics_and_no_others(environment: Environment) -> None:
    bootstrap = environment.kafka_bootstrap_servers
    mine, other = f"cleanup-{secrets.token_hex(3)}.", f"kept-{secrets.token_hex(3)}."
    await ensure_topics(
        bootstrap, [f"{mine}a", f"{mine}b", f"{other}a"], partitions=1, replication_factor=1
    )
    try:
        deleted = await delete_topics_with_prefix(bootstrap, mine)
        assert sorted(deleted) == [f"{mine}a", f"{mine}b"]
        with pytest.raises(ValueError, match="prefix is required"):
            await delete_topics_with_prefix(bootstrap, "")
    finally:
        assert await delete_topics_with_prefix(bootstrap, other) == [f"{other}a"]
