"""What the services need from a transport, independent of Kafka or PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class OutgoingRecord:
    key: bytes
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The log's time for the record, in ms since the epoch (Kafka's record timestamp:
    #: the producer's create time, or the broker's append time if the topic says so).
    timestamp_ms: int | None = None

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class TransportUnavailableError(Exception):
    """The transport did not durably accept records in time; the caller may retry."""


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        """Return only once every record is durable (Kafka: acks=all), else raise
        :class:`TransportUnavailableError`."""
        ...

    async def ping(self) -> None:
        """Raise if the transport cannot be reached (for readiness probes)."""
        ...


class AssignmentListener(Protocol):
    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Partitions were assigned: return the stored next offset of those that have one."""
        ...

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions are about to be revoked: finish and commit the batch in progress."""
        ...


class RecordSource(Protocol):
    async def start(self, listener: AssignmentListener) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self,
        *,
        timeout_ms: int,
        max_records: int,
        excluding: Collection[TopicPartition] = (),
    ) -> list[Record]:
        """Up to ``max_records`` records, waiting up to ``timeout_ms`` for the first;
        none of the partitions in ``excluding``."""
        ...

    async def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The state up to these offsets is committed in PostgreSQL (the source of
        truth); Kafka also records them for lag monitoring."""
        ...

    async def ping(self) -> None: ...
