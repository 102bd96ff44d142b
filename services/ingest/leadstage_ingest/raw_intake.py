"""The Kafka raw intake: tools that produce straight to Kafka write raw JSON
(schema v1 or Segment-shaped) to ``<prefix>touchpoints.raw.v1``; this consumer
checks each record exactly as the HTTP path does and forwards the valid ones.

A record names its sender with a ``write-key`` header (or Segment's
``writeKey`` in the body), or, for trusted producers such as
``leadstage dlq replay``, a ``source`` header naming an active source.

Offsets are committed to Kafka only after the forwarded records are
acknowledged and their event_ids claimed, so a crash re-delivers rather than
loses; re-delivered records are duplicates and are not forwarded twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from leadstage import dlq
from leadstage.credentials import Source, find_source
from leadstage.db.session import SessionFactory
from leadstage.http import ApiError
from leadstage.settings import IngestSettings
from leadstage.transport.base import Record, RecordSource, TopicPartition
from leadstage_ingest import segment
from leadstage_ingest.intake import native_candidate, segment_candidate
from leadstage_ingest.service import Candidate, Intake, WriteKeys
from leadstage_ingest.validation import ErrorKind, Rejected, parse_json

logger = logging.getLogger(__name__)


def is_segment_shaped(payload: Mapping[str, Any]) -> bool:
    return "occurred_at" not in payload and payload.get("type") in set(segment.SegmentMessageType)


def received_at_of(record: Record, *, now: datetime) -> datetime:
    """When LeadStage first received ``record``: a replayed dead letter's original time
    (``dlq.RECEIVED_AT_HEADER``), else the record's time in the log, else ``now``.

    Not the time it is consumed: a Segment message's clock-skew correction counts from
    the receive time, so an intake running behind (or a replay days later) would move
    the event by as much. A time that cannot be read, or is later than ``now``, is
    ignored."""
    header = record.headers.get(dlq.RECEIVED_AT_HEADER)
    if header is not None:
        try:
            replayed = datetime.fromisoformat(header)
        except ValueError:
            pass
        else:
            if replayed.tzinfo is not None and replayed <= now:
                return replayed
    if record.timestamp_ms is not None and record.timestamp_ms >= 0:
        try:
            logged = datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return now
        if logged <= now:
            return logged
    return now


class RawIntake:
    def __init__(
        self,
        settings: IngestSettings,
        sessions: SessionFactory,
        source: RecordSource,
        intake: Intake,
        write_keys: WriteKeys,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._source = source
        self._intake = intake
        self._write_keys = write_keys
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()

    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {}  # positions live in Kafka for this consumer

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        async with self._batch_lock:
            return

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._source.start(self)
        logger.info("raw intake consuming topic=%s", self._settings.raw_touchpoints_topic)
        try:
            while not self._stopping.is_set():
                records = await self._source.getmany(timeout_ms=200, max_records=500)
                if records:
                    async with self._batch_lock:
                        await self._forward_with_retry(records)
        finally:
            await self._source.stop()

    async def _forward_with_retry(self, records: Sequence[Record]) -> None:
        delay = 0.5
        while True:
            try:
                await self.forward(records)
                return
            except ApiError as error:  # 503: the event log did not acknowledge
                if self._stopping.is_set():
                    raise
                logger.warning(
                    "raw batch not forwarded (%s); retrying in %.1fs", error.message, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def forward(self, records: Sequence[Record]) -> None:
        received_at = datetime.now(UTC)
        by_source: dict[str, list[Candidate]] = defaultdict(list)
        for record in records:
            source_name, candidate = await self._candidate(
                record, received_at_of(record, now=received_at)
            )
            by_source[source_name].append(candidate)
        for source_name, candidates in by_source.items():
            await self._intake.accept(candidates, source_name, intake="kafka")
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = record.topic_partition
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        await self._source.committed(offsets)
        first = records[0]
        logger.info(
            "forwarded raw batch topic=%s partition=%s offset=%s records=%s",
            first.topic,
            first.partition,
            first.offset,
            len(records),
        )

    async def _sender(self, record: Record, payload: Any) -> Source | None:
        key = record.headers.get("write-key")
        if key is None and isinstance(payload, Mapping):
            key = payload.get("writeKey") if isinstance(payload.get("writeKey"), str) else None
        if key:
            return await self._write_keys.lookup(key)
        named = record.headers.get("source")
        if named:
            async with self._sessions() as session:
                return await find_source(session, named)
        return None

    async def _candidate(self, record: Record, received_at: datetime) -> tuple[str, Candidate]:
        origin = {
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
        }
        try:
            payload = parse_json(record.value)
        except Rejected as rejection:
            return "unknown", Candidate(
                raw=None,
                rejection=rejection,
                origin=origin,
                original=record.value,
                received_at=received_at,
            )
        sender = await self._sender(record, payload)
        if sender is None:
            return "unknown", Candidate(
                raw=payload,
                original=record.value,
                origin=origin,
                received_at=received_at,
                rejection=Rejected(
                    ErrorKind.UNKNOWN_WRITE_KEY,
                    "write-key",
                    "no valid write key or source on the record",
                ),
            )
        # A record without an id gets one from its position: redelivery keeps it.
        fallback_id = f"kafka:{record.topic}:{record.partition}:{record.offset}"
        limits = self._intake.limits
        if isinstance(payload, Mapping) and is_segment_shaped(payload):
            message = {"messageId": fallback_id, **payload}
            candidate = segment_candidate(
                message,
                sender.name,
                received_at,
                limits,
                config=self._intake.segment_config,
                size_known_below=len(record.value),
            )
        else:
            if isinstance(payload, Mapping) and "event_id" not in payload:
                payload = {**payload, "event_id": fallback_id}
            candidate = native_candidate(
                payload, sender.name, received_at, limits, size_known_below=len(record.value)
            )
        candidate.origin = origin
        candidate.original = record.value  # dead letters keep the bytes as produced
        candidate.received_at = received_at
        return sender.name, candidate
