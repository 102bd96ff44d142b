"""From request bodies (native schema v1 or Segment) to intake candidates and answers.

Everything that is wrong with an authenticated client's event is answered
with its field and reason, and the event goes to the dead-letter topic.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import status

from leadstage.credentials import Source
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.http import ApiError, ErrorDetail
from leadstage_ingest import segment
from leadstage_ingest.schemas import (
    BatchItemResult,
    BatchResult,
    EventError,
    EventResult,
    SegmentAccepted,
)
from leadstage_ingest.service import Candidate, EventOutcome, Intake
from leadstage_ingest.validation import (
    ErrorKind,
    Limits,
    Rejected,
    check_size,
    check_structure,
    check_time,
    may_contain_nul,
    parse_json,
    to_touchpoint,
    to_touchpoints,
)

logger = logging.getLogger(__name__)

TouchpointBody = TouchpointIn

_STATUS_OF_KIND = {
    ErrorKind.JSON_INVALID: status.HTTP_400_BAD_REQUEST,
    ErrorKind.SIZE_VIOLATION: status.HTTP_413_CONTENT_TOO_LARGE,
}


def _error(rejection: Rejected) -> ApiError:
    return ApiError(
        _STATUS_OF_KIND.get(rejection.kind, status.HTTP_422_UNPROCESSABLE_CONTENT),
        rejection.kind,
        {
            ErrorKind.JSON_INVALID: "The request body is not valid JSON.",
            ErrorKind.SIZE_VIOLATION: "The event is over the size limit.",
        }.get(rejection.kind, "The event was rejected."),
        details=[ErrorDetail(field=rejection.field, reason=rejection.message)],
    )


def parse_object(body: bytes) -> Mapping[str, Any]:
    try:
        parsed = parse_json(body)
    except Rejected as rejection:
        raise _error(rejection) from rejection
    if not isinstance(parsed, Mapping):
        raise _error(Rejected(ErrorKind.SCHEMA_VIOLATION, None, "the body must be a JSON object"))
    return parsed


def body_write_key(body: Mapping[str, Any]) -> str | None:
    """The ``writeKey`` in a Segment body; one that is not a string is answered 422."""
    try:
        return segment.body_write_key(body)
    except segment.SegmentMappingError as error:
        raise _error(Rejected(ErrorKind.SCHEMA_VIOLATION, error.field, error.reason)) from error


def native_candidate(
    raw: Any,
    source: str,
    received_at: datetime,
    limits: Limits,
    *,
    size_known_below: int | None = None,
    check_nul: bool = True,
) -> Candidate:
    try:
        touchpoint = to_touchpoint(
            raw,
            source=source,
            received_at=received_at,
            limits=limits,
            size_known_below=size_known_below,
            check_nul=check_nul,
        )
    except Rejected as error:
        rejection = error
    except Exception:  # noqa: BLE001 - one event's failure must not sink its batch
        rejection = _processing_error(source)
    else:
        return Candidate(raw=raw, touchpoint=touchpoint)
    return Candidate(raw=raw, rejection=rejection, received_at=received_at)


def _processing_error(source: str) -> Rejected:
    """An event whose checks raised an unexpected error: a bug of ours, on this input.
    Logged with the traceback; the event is rejected and dead-lettered on its own."""
    logger.exception("an event from source=%s could not be checked", source)
    return Rejected(ErrorKind.PROCESSING_ERROR, None, "the event could not be processed")


async def single_event(intake: Intake, body: bytes, source: Source) -> EventResult:
    received_at = datetime.now(UTC)
    try:
        raw = parse_json(body)
    except Rejected as rejection:
        intake.dead_letters.put(
            Candidate(raw=None, rejection=rejection), source=source.name, raw=body
        )
        raise _error(rejection) from rejection
    candidate = native_candidate(
        raw,
        source.name,
        received_at,
        intake.limits,
        size_known_below=len(body),
        check_nul=may_contain_nul(body),
    )
    [outcome] = await intake.accept([candidate], source.name, intake="http")
    if candidate.rejection is not None:
        raise _error(candidate.rejection)
    assert outcome.status != "rejected" and outcome.event_id is not None  # noqa: PT018, S101
    return EventResult(status=outcome.status, event_id=outcome.event_id, lead_id=outcome.lead_id)


def parse_native_batch(body: bytes, max_events: int) -> list[Any]:
    envelope = parse_object(body)
    events = envelope.get("events")
    if not isinstance(events, list):
        raise _error(Rejected(ErrorKind.SCHEMA_VIOLATION, "events", "a list of events is required"))
    _check_batch_size(len(events), max_events, field="events", noun="events")
    return events


def _check_batch_size(count: int, max_events: int, *, field: str, noun: str) -> None:
    if count > max_events:
        raise ApiError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            ErrorKind.SIZE_VIOLATION,
            f"A batch holds at most {max_events} {noun}; this one has {count}.",
            details=[ErrorDetail(field=field, reason=f"at most {max_events} {noun}")],
        )


def batch_result(outcomes: Sequence[EventOutcome]) -> BatchResult:
    results = [
        BatchItemResult(
            index=i,
            status=o.status,
            event_id=o.event_id,
            lead_id=o.lead_id,
            error=EventError(kind=o.kind, field=o.field, reason=o.reason or "") if o.kind else None,
        )
        for i, o in enumerate(outcomes)
    ]
    return BatchResult(
        accepted=sum(o.status == "accepted" for o in outcomes),
        duplicates=sum(o.status == "duplicate" for o in outcomes),
        rejected=sum(o.status == "rejected" for o in outcomes),
        results=results,
    )


def batch_result_json(outcomes: Sequence[EventOutcome]) -> bytes:
    """``batch_result(outcomes)`` serialised, built without a model per event (same JSON)."""
    counts = Counter(o.status for o in outcomes)
    return orjson.dumps(
        {
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": counts["rejected"],
            "results": [
                {
                    "index": i,
                    "status": o.status,
                    "event_id": o.event_id,
                    "lead_id": o.lead_id,
                    "error": (
                        {"kind": o.kind, "field": o.field, "reason": o.reason or ""}
                        if o.kind
                        else None
                    ),
                }
                for i, o in enumerate(outcomes)
            ],
        }
    )


async def native_batch(
    intake: Intake, events: Sequence[Any], source: Source, *, body: bytes
) -> list[EventOutcome]:
    received_at = datetime.now(UTC)
    validated = to_touchpoints(
        events,
        source=source.name,
        received_at=received_at,
        limits=intake.limits,
        size_known_below=len(body),
        check_nul=may_contain_nul(body),
    )
    candidates = [
        Candidate(raw=event, rejection=outcome, received_at=received_at)
        if isinstance(outcome, Rejected)
        else Candidate(raw=event, touchpoint=outcome)
        for event, outcome in zip(events, validated, strict=True)
    ]
    return await intake.accept(candidates, source.name, intake="http")


# -- Segment ----------------------------------------------------------------------------


def segment_batch_messages(envelope: Mapping[str, Any], max_events: int) -> list[Any]:
    try:
        messages, _, _ = segment.split_batch(envelope)
    except segment.SegmentMappingError as error:
        raise _error(Rejected(ErrorKind.SCHEMA_VIOLATION, error.field, error.reason)) from error
    _check_batch_size(len(messages), max_events, field="batch", noun="messages")
    return list(messages)


def segment_candidate(
    message: Any,
    source: str,
    received_at: datetime,
    limits: Limits,
    *,
    expected_type: str | None = None,
    batch_sent_at: datetime | None = None,
    batch_context: Mapping[str, Any] | None = None,
    config: segment.SegmentMappingConfig = segment.DEFAULT_CONFIG,
    size_known_below: int | None = None,
) -> Candidate:
    try:
        if not isinstance(message, Mapping):
            raise Rejected(ErrorKind.SCHEMA_VIOLATION, None, "a message must be a JSON object")
        if expected_type is not None and message.get("type", expected_type) != expected_type:
            raise Rejected(
                ErrorKind.SCHEMA_VIOLATION, "type", f"this endpoint takes {expected_type}"
            )
        if expected_type is not None and "type" not in message:
            message = {**message, "type": expected_type}
        check_structure(message, limits)  # first: it stops at the depth limit
        check_size(message, limits, size_known_below=size_known_below)
        try:
            mapped = segment.to_touchpoint(
                message,
                received_at=received_at,
                config=config,
                batch_sent_at=batch_sent_at,
                batch_context=batch_context,
            )
        except segment.SegmentTimeOutOfRangeError as error:
            raise Rejected(ErrorKind.TIMESTAMP_OUT_OF_RANGE, error.field, error.reason) from error
        except segment.SegmentMappingError as error:
            raise Rejected(ErrorKind.SCHEMA_VIOLATION, error.field, error.reason) from error
        check_time(mapped.touchpoint.occurred_at, received_at=received_at, limits=limits)
        touchpoint = Touchpoint.accept(mapped.touchpoint, source=source, received_at=received_at)
    except Rejected as error:
        rejection = error
    except Exception:  # noqa: BLE001 - one message's failure must not sink its batch
        rejection = _processing_error(source)
    else:
        return Candidate(raw=message, touchpoint=touchpoint, previous_id=mapped.previous_id)
    return Candidate(
        raw=_as_sent_alone(message, batch_sent_at, batch_context),
        rejection=rejection,
        received_at=received_at,
    )


def _as_sent_alone(
    message: Any, batch_sent_at: datetime | None, batch_context: Mapping[str, Any] | None
) -> Any:
    """What a rejected message's dead letter keeps: see ``segment.standalone``."""
    if not isinstance(message, Mapping):
        return message
    return segment.standalone(message, batch_sent_at, batch_context)


async def segment_messages(
    intake: Intake,
    messages: Sequence[Any],
    source: Source,
    *,
    expected_type: str | None = None,
    envelope: Mapping[str, Any] | None = None,
    body_size: int | None = None,
) -> SegmentAccepted:
    received_at = datetime.now(UTC)
    batch_sent_at: datetime | None = None
    batch_context: Mapping[str, Any] | None = None
    if envelope is not None:
        _, batch_sent_at, batch_context = segment.split_batch(envelope)
        if batch_context is not None:
            # Merged into every message: checked as a message's own context would be.
            try:
                check_structure({"context": batch_context}, intake.limits)
            except Rejected as rejection:
                raise _error(rejection) from rejection
    candidates = [
        segment_candidate(
            m,
            source.name,
            received_at,
            intake.limits,
            expected_type=expected_type,
            batch_sent_at=batch_sent_at,
            batch_context=batch_context,
            config=intake.segment_config,
            size_known_below=body_size,
        )
        for m in messages
    ]
    outcomes = await intake.accept(candidates, source.name, intake="http")
    if expected_type is not None and candidates[0].rejection is not None:
        raise _error(candidates[0].rejection)
    return SegmentAccepted(results=batch_result(outcomes).results)
