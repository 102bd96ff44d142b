"""``leadstage dlq inspect|replay``: look at dead letters, and send them back after a fix.

Dead letters keep the original bytes of the record and, in the ``leadstage.dlq``
header, why it was refused (error kind, field, message, source, and where it
came from). ``replay`` republishes the original payloads to the raw topic with
their source, so ingest checks them again exactly as it did the first time.

A payload over ``MAX_PAYLOAD_BYTES`` is kept only up to that size, so that every
dead letter fits in a produce request (see ``dead_letter``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from leadstage.db.session import SessionFactory
from leadstage.settings import ServiceSettings
from leadstage.transport import create_publisher, create_source
from leadstage.transport.base import OutgoingRecord, Record, TopicPartition

#: The most of a payload a dead letter keeps. A record near the broker's size limit (1 MiB
#: by default) would not fit in a produce request with the reason's headers added: its
#: dead letter would fail for good, and the writer retrying it would hold up everything
#: behind it (the engine's partition, ingest's later dead letters). No payload this large
#: is a valid event (events are limited to a few tens of KB), so nothing replayable is
#: lost; the reason records the original size.
MAX_PAYLOAD_BYTES = 256 * 1024

#: On a raw record: when LeadStage first received it (ISO 8601), set by ``replay``.
RECEIVED_AT_HEADER = "leadstage.received-at"


def dead_letter(key: bytes, payload: bytes, reason: Mapping[str, Any]) -> OutgoingRecord:
    """The dead letter of a refused record: its key, its payload (cut to
    ``MAX_PAYLOAD_BYTES``) and why it was refused, in the ``leadstage.dlq`` header."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        reason = {**reason, "payload_bytes": len(payload), "payload_truncated": True}
        payload = payload[:MAX_PAYLOAD_BYTES]
    return OutgoingRecord(
        key=key,
        value=payload,
        headers={"leadstage.dlq": json.dumps(reason), "error_kind": str(reason["error_kind"])},
    )


class _FromStart:
    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {}

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        return None


def reason_of(record: Record) -> dict[str, Any]:
    try:
        reason = json.loads(record.headers.get("leadstage.dlq", "{}"))
    except json.JSONDecodeError:
        return {}
    return reason if isinstance(reason, dict) else {}


async def dead_letters(
    settings: ServiceSettings, sessions: SessionFactory, *, idle_seconds: float = 3.0
) -> AsyncIterator[Record]:
    """Every dead letter, oldest first per partition; ends after ``idle_seconds`` of quiet."""
    source = create_source(
        settings,
        sessions,
        topic=settings.dead_letter_topic,
        group=f"leadstage-dlq-inspect-{time.time_ns()}",
    )
    await source.start(_FromStart())
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_seconds:
            records = await source.getmany(timeout_ms=500, max_records=500)
            if records:
                quiet_since = time.monotonic()
            for record in records:
                yield record
    finally:
        await source.stop()


def describe(record: Record, *, payload_chars: int = 300) -> dict[str, Any]:
    return {
        "partition": record.partition,
        "offset": record.offset,
        **reason_of(record),
        "payload": record.value.decode(errors="replace")[:payload_chars],
    }


def replay_record(record: Record, *, kind: str | None = None) -> OutgoingRecord | None:
    """The raw record that replays the dead letter ``record``, or None when it is not
    to be replayed: not ingest's, not of ``kind``, or cut (only part of it is there)."""
    reason = reason_of(record)
    if reason.get("rejected_by") != "ingest" or (kind and reason.get("error_kind") != kind):
        return None
    if reason.get("payload_truncated"):
        return None
    headers = {"leadstage.replayed-from": f"{record.partition}:{record.offset}"}
    if reason.get("source"):
        headers["source"] = str(reason["source"])
    # The replayed record is read as of its first arrival (time limits, a Segment
    # message's clock-skew correction), not as of the replay: the receive time its checks
    # used, or for older dead letters the rejection's, which followed it within ms (HTTP).
    received = reason.get("received_at") or reason.get("rejected_at")
    if received:
        headers[RECEIVED_AT_HEADER] = str(received)
    return OutgoingRecord(key=record.key or b"", value=record.value, headers=headers)


async def replay(
    settings: ServiceSettings, sessions: SessionFactory, *, kind: str | None = None
) -> int:
    """Republish ingest's dead letters (optionally of one error kind) to the raw topic.

    Cut payloads are not republished: only part of the record is there."""
    publisher = create_publisher(settings, sessions)
    await publisher.start()
    replayed = 0
    try:
        batch: list[OutgoingRecord] = []
        async for record in dead_letters(settings, sessions):
            again = replay_record(record, kind=kind)
            if again is None:
                continue
            batch.append(again)
            if len(batch) >= 500:
                await publisher.publish(settings.raw_touchpoints_topic, batch)
                replayed += len(batch)
                batch = []
        if batch:
            await publisher.publish(settings.raw_touchpoints_topic, batch)
            replayed += len(batch)
    finally:
        await publisher.stop()
    return replayed
