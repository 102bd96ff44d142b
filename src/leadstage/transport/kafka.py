"""Apache Kafka transport (aiokafka)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from leadstage.transport.base import (
    AssignmentListener,
    OutgoingRecord,
    Record,
    TopicPartition,
    TransportUnavailableError,
)

logger = logging.getLogger(__name__)

_MAX_BATCH_BYTES = 512 * 1024


@functools.lru_cache(maxsize=100_000)
def _key_hash(key: bytes) -> int:
    """A key's murmur2 hash, remembered: aiokafka computes it in Python, byte by byte,
    which was ~4% of ingest's CPU under batched load. A lead's events share a key, so
    keys repeat; the cache is bounded."""
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_of(key: bytes, partitions: Sequence[int]) -> int:
    """The partition aiokafka's (and Java's) default partitioner gives ``key`` among the
    topic's ``partitions``, sorted."""
    return partitions[_key_hash(key) % len(partitions)]


class KafkaPublisher:
    """An idempotent producer with acks=all: a returned publish is on every in-sync replica."""

    def __init__(self, bootstrap_servers: str, *, timeout_seconds: float = 5.0) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            await self._ensure_started()
        except TransportUnavailableError:
            # Start anyway: the service reports not-ready and answers 503 until the
            # broker is reachable; the next publish tries again.
            logger.warning("Kafka at %s is not reachable yet", self._bootstrap_servers)

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._start_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap_servers,
                    acks="all",
                    enable_idempotence=True,
                    # No linger: callers hand over whole groups, already one batch per
                    # partition (``_send_batches``). aiokafka lingers even a batch built
                    # with ``create_batch``, so linger_ms=2 added 2.3 ms to every
                    # acknowledgement (0.22 ms without it, sequential, on loopback) while
                    # the next group's records waited behind it.
                    linger_ms=0,
                    # Ingest hands over up to 500 events at once, as one batch per partition.
                    max_batch_size=_MAX_BATCH_BYTES,
                    request_timeout_ms=int(self._timeout * 1000),
                )
                try:
                    async with asyncio.timeout(self._timeout):
                        await producer.start()
                except (KafkaError, TimeoutError, OSError) as error:
                    await producer.stop()
                    raise TransportUnavailableError(f"Kafka unreachable: {error!r}") from error
                self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()  # flushes what is still buffered
            self._producer = None

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        producer = await self._ensure_started()
        try:
            async with asyncio.timeout(self._timeout):
                deliveries = await self._send_batches(producer, topic, records)
                await asyncio.gather(*deliveries)
        except (KafkaError, TimeoutError) as error:
            raise TransportUnavailableError(f"Kafka did not acknowledge: {error!r}") from error

    @staticmethod
    async def _send_batches(
        producer: AIOKafkaProducer, topic: str, records: Sequence[OutgoingRecord]
    ) -> list[asyncio.Future[Any]]:
        """One record batch per partition rather than one ``send`` per record.

        ``send`` costs a future, a metadata lookup and an accumulator call for every
        record, which made it most of ingest's per-event time. The partition is the one
        ``send`` would pick (the default murmur2 partitioner over the sorted partitions),
        so a key's records land where any Kafka client would put them.
        """
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[OutgoingRecord]] = {}
        for record in records:
            partition = partition_of(record.key, partitions)
            by_partition.setdefault(partition, []).append(record)
        deliveries: list[asyncio.Future[Any]] = []
        for partition, group in by_partition.items():
            batch = producer.create_batch()
            for record in group:
                headers = [(k, v.encode()) for k, v in record.headers.items()]
                if batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=headers
                ):
                    continue
                if batch.record_count():
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                if not batch.append(
                    key=record.key, value=record.value, timestamp=None, headers=headers
                ):
                    # Larger than a whole batch: the producer's own path splits nothing
                    # either, but reports the size error the broker would give.
                    deliveries.append(
                        await producer.send(
                            topic,
                            record.value,
                            key=record.key,
                            partition=partition,
                            headers=headers,
                        )
                    )
            if batch.record_count():
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        return deliveries

    async def ping(self) -> None:
        producer = await self._ensure_started()
        try:
            async with asyncio.timeout(self._timeout):
                await producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError) as error:
            raise TransportUnavailableError(f"Kafka unreachable: {error!r}") from error


class _RebalanceAdapter(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, consumer: AIOKafkaConsumer, listener: AssignmentListener, *, seek: bool
    ) -> None:
        self._consumer = consumer
        self._listener = listener
        self._seek = seek
        self.failure: Exception | None = None

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        await self._listener.on_revoked({TopicPartition(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[KafkaTopicPartition]) -> None:
        partitions = {TopicPartition(tp.topic, tp.partition) for tp in assigned}
        if self._seek:
            # Nothing from these partitions until they are positioned from PostgreSQL.
            self._consumer.pause(*assigned)
        try:
            stored = await self._listener.on_assigned(partitions)
        except Exception as error:
            # aiokafka would log this and go on consuming from unknown positions:
            # remember it, and fail the next getmany instead.
            self.failure = error
            raise
        if not self._seek:
            return
        # Only synchronous seeks from here on: an await between two seeks would let
        # the fetcher hand out records from positions not yet set.
        for tp in sorted(assigned):
            # PostgreSQL, not the broker, is the source of truth. With no stored
            # position the partition is read from offset 0 (auto_offset_reset moves
            # that to the log start when retention has deleted the head).
            next_offset = stored.get(TopicPartition(tp.topic, tp.partition), 0)
            self._consumer.seek(tp, next_offset)
            logger.info(
                "assigned topic=%s partition=%s offset=%s", tp.topic, tp.partition, next_offset
            )
        self._consumer.resume(*assigned)


class KafkaRecordSource:
    """A consumer-group member with auto-commit off; positions live in PostgreSQL."""

    def __init__(
        self, bootstrap_servers: str, *, topic: str, group: str, positions_in_kafka: bool = False
    ) -> None:
        """``positions_in_kafka``: resume from the group's offsets committed in Kafka
        (for consumers whose output is not in PostgreSQL, such as the raw intake)."""
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._group = group
        self._positions_in_kafka = positions_in_kafka
        self._started: AIOKafkaConsumer | None = None
        self._listener: _RebalanceAdapter | None = None

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._started is None:
            raise RuntimeError("the consumer is not started")
        return self._started

    async def start(self, listener: AssignmentListener) -> None:
        # aiokafka binds the consumer to the running loop: create it here.
        self._started = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._listener = _RebalanceAdapter(
            self._consumer, listener, seek=not self._positions_in_kafka
        )
        self._consumer.subscribe([self._topic], listener=self._listener)

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()
            self._started = None

    async def getmany(
        self,
        *,
        timeout_ms: int,
        max_records: int,
        excluding: Collection[TopicPartition] = (),
    ) -> list[Record]:
        if self._listener is not None and self._listener.failure is not None:
            raise RuntimeError("partition assignment failed") from self._listener.failure
        partitions: list[KafkaTopicPartition] = []
        if excluding:
            skipped = {KafkaTopicPartition(tp.topic, tp.partition) for tp in excluding}
            partitions = sorted(set(self._consumer.assignment()) - skipped)
            if not partitions:  # nothing else assigned (yet): nothing to wait for here
                await asyncio.sleep(timeout_ms / 1000)
                return []
        batches = await self._consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        return [
            Record(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers={
                    k: v.decode(errors="replace") if v is not None else ""
                    for k, v in message.headers
                },
                timestamp_ms=message.timestamp,
            )
            for messages in batches.values()
            for message in messages
        ]

    async def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._positions_in_kafka:
            # Kafka holds the truth here: a failed commit must be seen (the batch
            # is then redelivered, and deduplicated downstream).
            await self._consumer.commit(
                {
                    KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                    for tp, offset in offsets.items()
                }
            )
            return
        try:
            await self._consumer.commit(
                {
                    KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                    for tp, offset in offsets.items()
                }
            )
        except KafkaError as error:
            # Only lag monitoring reads these; PostgreSQL already has the truth.
            logger.warning("could not record offsets in Kafka: %r", error)

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self._consumer._client.fetch_all_metadata()
        except (KafkaError, TimeoutError) as error:
            raise TransportUnavailableError(f"Kafka unreachable: {error!r}") from error


async def ensure_topics(
    bootstrap_servers: str, topics: Sequence[str], *, partitions: int, replication_factor: int
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
            for name in topics
            if name not in existing
        ]
        if missing:
            # Another process may create them between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def delete_topics_with_prefix(bootstrap_servers: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a test run's or a
    benchmark's throwaway topics). Returns their names.

    Left behind, they pile up on the local broker: after a day of runs it held 2,400
    topics in 14,000 partition directories (17 GB), and its produce latency grew.
    """
    if not prefix:
        raise ValueError("a prefix is required: this must never delete every topic")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()
