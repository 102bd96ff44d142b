"""Turning untrusted JSON into a touchpoint, or a rejection that names the reason.

The same function serves HTTP and the Kafka raw intake, so both refuse exactly
the same records for exactly the same reasons.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from leadstage import compact_json
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.http import validation_details

logger = logging.getLogger(__name__)


class ErrorKind:
    JSON_INVALID = "json_invalid"
    SCHEMA_VIOLATION = "schema_violation"
    SIZE_VIOLATION = "size_violation"
    UNKNOWN_WRITE_KEY = "unknown_write_key"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    LIMIT_EXCEEDED = "limit_exceeded"
    #: Checking the event raised an error of ours: it is dead-lettered (and logged with
    #: the traceback) instead of failing its request or stopping the raw intake.
    PROCESSING_ERROR = "processing_error"


class Rejected(Exception):  # noqa: N818 - a domain outcome, not an error of ours
    """A record refused at intake: kind, field (dotted) and a reason for humans."""

    def __init__(self, kind: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 32 * 1024
    max_depth: int = 8
    max_properties: int = 200
    max_future: timedelta = timedelta(days=1)
    horizon: timedelta = timedelta(days=730)


def parse_json(raw: bytes) -> Any:
    # orjson underneath: several times faster than the standard library, and stricter
    # where PostgreSQL is (no lone surrogates, no NaN or Infinity); integers stay exact.
    try:
        return compact_json.loads(raw)
    except orjson.JSONDecodeError as error:
        raise Rejected(ErrorKind.JSON_INVALID, None, str(error)) from error


def may_contain_nul(raw: bytes) -> bool:
    """Whether parsed JSON from ``raw`` can hold a NUL character anywhere.

    JSON cannot carry a raw NUL inside a string, only the escape ``\\u0000``, so a
    body without that escape needs no NUL check on any of its strings.
    """
    return b"\\u0000" in raw or b"\x00" in raw


#: What JSON parsing gives besides objects and arrays: nothing to walk into.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def check_structure(
    value: object, limits: Limits, path: str = "", *, check_nul: bool = True
) -> None:
    """Depth, key count and NUL characters (PostgreSQL's JSONB refuses \\u0000).

    ``check_nul=False`` when the raw bytes showed there can be none (see
    ``may_contain_nul``): then scalar values need no look at all, which is most of them.
    Objects are tested as ``dict`` first (a C check), as ``Mapping`` only when they are
    not one, and scalars by their exact type: the abstract class's ``isinstance`` on
    every value was most of this walk's time.
    """
    counted = 0

    def walk(node: object, where: str, depth: int) -> None:
        nonlocal counted
        if depth > limits.max_depth:
            raise Rejected(
                ErrorKind.LIMIT_EXCEEDED,
                where or None,
                f"nested deeper than {limits.max_depth} levels",
            )
        if isinstance(node, str):
            if check_nul and "\x00" in node:
                raise Rejected(
                    ErrorKind.SCHEMA_VIOLATION,
                    where or None,
                    "strings may not contain NUL characters",
                )
        elif isinstance(node, dict | Mapping):
            counted += len(node)
            if counted > limits.max_properties:
                raise Rejected(
                    ErrorKind.LIMIT_EXCEEDED,
                    where or None,
                    f"more than {limits.max_properties} fields",
                )
            if node and depth == limits.max_depth:
                _too_deep(next(iter(node)), where, limits)  # even when the child is a scalar
            for key, child in node.items():
                if check_nul and "\x00" in str(key):
                    raise Rejected(
                        ErrorKind.SCHEMA_VIOLATION,
                        where or None,
                        "field names may not contain NUL characters",
                    )
                if check_nul or type(child) not in _SCALARS:
                    walk(child, f"{where}.{key}" if where else str(key), depth + 1)
        elif isinstance(node, list):
            if node and depth == limits.max_depth:
                _too_deep(0, where, limits)
            for i, child in enumerate(node):
                if check_nul or type(child) not in _SCALARS:
                    walk(child, f"{where}.{i}" if where else str(i), depth + 1)

    walk(value, path, 0)


def _too_deep(first: object, where: str, limits: Limits) -> None:
    """A container at the deepest level allowed holds something: one level too deep.

    Raised here rather than on visiting the child, because scalar children are not
    visited when no NUL check is needed: the limit must not depend on that."""
    raise Rejected(
        ErrorKind.LIMIT_EXCEEDED,
        f"{where}.{first}" if where else str(first),
        f"nested deeper than {limits.max_depth} levels",
    )


def check_size(event: object, limits: Limits, *, size_known_below: int | None = None) -> None:
    """The event's size as compact UTF-8 JSON, against the per-event limit.

    ``size_known_below``: the event came in a body of at most this many bytes; when
    that is within the limit, the event need not be measured. Measured as UTF-8 (not
    ASCII-escaped JSON, where an "é" counts 6 bytes and an emoji 12), so an event's
    size does not depend on how it arrived.
    """
    if size_known_below is not None and size_known_below <= limits.max_event_bytes:
        return
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode())
    if size > limits.max_event_bytes:
        raise Rejected(
            ErrorKind.SIZE_VIOLATION,
            None,
            f"the event is {size} bytes; the limit is {limits.max_event_bytes}",
        )


#: Fields ingest sets itself; a client may not send them.
_STAMPED = frozenset(Touchpoint.model_fields) - frozenset(TouchpointIn.model_fields)


def to_touchpoint(
    event: object,
    *,
    source: str,
    received_at: datetime,
    limits: Limits,
    size_known_below: int | None = None,
    check_nul: bool = True,
) -> Touchpoint:
    """Validate one event in schema v1 and stamp it with its source and arrival time.

    ``size_known_below``: the event came in a body of at most this many bytes; when
    that is within the per-event limit, the event's size need not be measured.
    """
    fields = _stamped_fields(
        event,
        source=source,
        received_at=received_at,
        limits=limits,
        size_known_below=size_known_below,
        check_nul=check_nul,
    )
    touchpoint = _validated(fields)
    check_time(touchpoint.occurred_at, received_at=received_at, limits=limits)
    return touchpoint


_TOUCHPOINTS = TypeAdapter(list[Touchpoint])


def to_touchpoints(
    events: Sequence[object],
    *,
    source: str,
    received_at: datetime,
    limits: Limits,
    size_known_below: int | None = None,
    check_nul: bool = True,
) -> list[Touchpoint | Rejected]:
    """``to_touchpoint`` for each event of a batch: its touchpoint or its rejection.

    The events that pass the structural checks are validated in one pydantic call,
    which costs less per event than one call each; only when that call fails are they
    validated one by one, so each bad event is named with its own field and reason,
    exactly as ``to_touchpoint`` would.
    """
    results: list[Touchpoint | Rejected] = []
    prepared: list[dict[str, Any]] = []
    positions: list[int] = []
    for event in events:
        try:
            fields = _stamped_fields(
                event,
                source=source,
                received_at=received_at,
                limits=limits,
                size_known_below=size_known_below,
                check_nul=check_nul,
            )
        except Rejected as rejection:
            results.append(rejection)
            continue
        except Exception:
            logger.exception("an event from source=%s could not be checked", source)
            results.append(
                Rejected(ErrorKind.PROCESSING_ERROR, None, "the event could not be processed")
            )
            continue
        positions.append(len(results))
        results.append(_PENDING)
        prepared.append(fields)
    try:
        validated: list[Touchpoint | Rejected] = list(_TOUCHPOINTS.validate_python(prepared))
    except ValidationError:
        validated = [_validated_or_rejection(fields) for fields in prepared]
    for position, outcome in zip(positions, validated, strict=True):
        if isinstance(outcome, Touchpoint):
            try:
                check_time(outcome.occurred_at, received_at=received_at, limits=limits)
            except Rejected as rejection:
                outcome = rejection
        results[position] = outcome
    return results


#: Holds a batch position until its event is validated (never returned).
_PENDING = Rejected(ErrorKind.SCHEMA_VIOLATION, None, "not validated")


def _stamped_fields(
    event: object,
    *,
    source: str,
    received_at: datetime,
    limits: Limits,
    size_known_below: int | None,
    check_nul: bool,
) -> dict[str, Any]:
    """The checks before the schema (shape, size, structure, fields ingest stamps), and
    the event's fields with ingest's stamps added."""
    if not isinstance(event, Mapping):
        raise Rejected(ErrorKind.SCHEMA_VIOLATION, None, "an event must be a JSON object")
    # Structure first: it stops at the depth limit, where measuring the size of an
    # event nested a thousand levels deep would exhaust the recursion limit.
    check_structure(event, limits, check_nul=check_nul)
    check_size(event, limits, size_known_below=size_known_below)
    if stamped := _STAMPED & event.keys():
        field = sorted(stamped)[0]
        raise Rejected(ErrorKind.SCHEMA_VIOLATION, field, "Extra inputs are not permitted")
    # One validation, straight into the stamped model (its fields are v1's plus
    # what ingest adds), instead of validating v1 and then copying. Only an absent id
    # is generated: a present but invalid one (0, "", false) is the client's mistake,
    # refused by the schema, not silently replaced.
    event_id = event.get("event_id")
    return {
        **event,
        "event_id": str(uuid.uuid4()) if event_id is None else event_id,
        "source": source,
        "received_at": received_at,
    }


def _validated(fields: dict[str, Any]) -> Touchpoint:
    try:
        return Touchpoint.model_validate(fields)
    except ValidationError as error:
        first = validation_details(error.errors())[0]
        raise Rejected(ErrorKind.SCHEMA_VIOLATION, first.field, first.reason) from error


def _validated_or_rejection(fields: dict[str, Any]) -> Touchpoint | Rejected:
    try:
        return _validated(fields)
    except Rejected as rejection:
        return rejection


def check_time(occurred_at: datetime, *, received_at: datetime, limits: Limits) -> None:
    # POSIX seconds: comparing aware datetimes of different zones is much slower.
    occurred, received = occurred_at.timestamp(), received_at.timestamp()
    if occurred > received + limits.max_future.total_seconds():
        raise Rejected(
            ErrorKind.TIMESTAMP_OUT_OF_RANGE,
            "occurred_at",
            f"more than {limits.max_future} in the future",
        )
    if occurred < received - limits.horizon.total_seconds():
        raise Rejected(
            ErrorKind.TIMESTAMP_OUT_OF_RANGE,
            "occurred_at",
            f"older than the {limits.horizon.days}-day horizon",
        )
