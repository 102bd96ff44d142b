"""Applying a batch of touchpoint records to lead state, set-based.

:func:`apply_batch` runs inside the caller's transaction and never commits:
the consumer owns the unit of work, so state and consumed offsets land in
PostgreSQL together or not at all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import (
    ConsumerOffset,
    LeadStage,
    LeadTransition,
    OutboxRecord,
    StoredTouchpoint,
    table,
)
from leadstage.events import Touchpoint
from leadstage.funnel import Funnel, Position
from leadstage.http import validation_details
from leadstage.transport.base import Record, TopicPartition


@dataclass(frozen=True)
class Rejection:
    """A record the engine cannot read: it goes to the dead-letter topic."""

    record: Record
    error_kind: str
    field: str | None
    message: str


@dataclass
class BatchOutcome:
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    stored: int = 0
    duplicates: int = 0
    transitions: int = 0


def parse_records(
    records: Sequence[Record],
) -> tuple[list[tuple[Record, Touchpoint]], list[Rejection]]:
    parsed: list[tuple[Record, Touchpoint]] = []
    rejected: list[Rejection] = []
    for record in records:
        try:
            parsed.append((record, Touchpoint.from_record(record.value)))
        except ValidationError as error:
            errors = error.errors()
            kind = "json_invalid" if errors[0]["type"] == "json_invalid" else "schema_violation"
            first = validation_details(errors)[0]
            rejected.append(Rejection(record, kind, first.field, first.reason))
    return parsed, rejected


def next_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = record.topic_partition
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


async def apply_batch(
    session: AsyncSession,
    records: Sequence[Record],
    *,
    consumer_group: str,
    funnels: Sequence[Funnel],
    outbox_topic: str = "lead-stage-changed.v1",
) -> BatchOutcome:
    """Store the batch's touchpoints, move leads, and record the consumed offsets."""
    parsed, rejected = parse_records(records)
    outcome = BatchOutcome(next_offsets=next_offsets(records), rejected=rejected)

    fresh = await _store_touchpoints(session, parsed)
    outcome.stored = len(fresh)
    outcome.duplicates = len(parsed) - len(fresh)
    if fresh:
        for funnel in funnels:
            outcome.transitions += await _advance_leads(session, funnel, fresh, outbox_topic)
    await store_offsets(session, consumer_group, outcome.next_offsets)
    return outcome


async def _store_touchpoints(
    session: AsyncSession, parsed: Sequence[tuple[Record, Touchpoint]]
) -> list[Touchpoint]:
    """Insert the touchpoints; return those not stored before, in arrival order.

    The primary key on (source, event_id) makes a redelivered or re-sent event a no-op.
    """
    if not parsed:
        return []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record, touchpoint in parsed:
        rows.setdefault(
            (touchpoint.source, touchpoint.event_id),
            {
                "event_id": touchpoint.event_id,
                "lead_key": touchpoint.lead_key,
                "type": touchpoint.type,
                "occurred_at": touchpoint.occurred_at,
                "received_at": touchpoint.received_at,
                "source": touchpoint.source,
                "payload": touchpoint.model_dump(mode="json", exclude_none=True),
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )
    # executemany form: SQLAlchemy batches it as "insertmanyvalues" with RETURNING,
    # which compiles once instead of a statement per batch size.
    inserted = await session.execute(
        insert(StoredTouchpoint)
        .on_conflict_do_nothing(index_elements=["source", "event_id"])
        .returning(StoredTouchpoint.source, StoredTouchpoint.event_id),
        list(rows.values()),
    )
    new_ids = {(source, event_id) for source, event_id in inserted}
    fresh: list[Touchpoint] = []
    for _, touchpoint in parsed:
        key = (touchpoint.source, touchpoint.event_id)
        if key in new_ids:
            new_ids.discard(key)  # a repeat inside the batch counts once
            fresh.append(touchpoint)
    return fresh


EventKey = tuple[datetime, str, str]


def event_key(occurred_at: datetime, source: str, event_id: str) -> EventKey:
    """The total order the funnel sees events in: event time, then a stable tie-break."""
    return (occurred_at, source, event_id)


@dataclass
class _LeadFold:
    """One lead's position in one funnel, folded event by event in event-time order."""

    position: Position | None
    first_touch_at: datetime | None
    last_touch_at: datetime | None
    last_event: tuple[str, str] | None  # (source, event_id) of the last event folded
    transitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_key(self) -> EventKey | None:
        if self.last_event is None or self.last_touch_at is None:
            return None
        return event_key(self.last_touch_at, *self.last_event)

    def fold(self, funnel: Funnel, lead: str, event: _EventRow) -> dict[str, Any] | None:
        """Apply one event that comes after every event folded so far."""
        occurred_at = event.occurred_at
        self.first_touch_at = min(self.first_touch_at or occurred_at, occurred_at)
        self.last_touch_at = max(self.last_touch_at or occurred_at, occurred_at)
        self.last_event = (event.source, event.event_id)
        transition = funnel.apply(self.position, event.type)
        if transition is None:
            return None
        self.position = Position(transition.to_stage, occurred_at)
        row = {
            "funnel": funnel.name,
            "lead_key": lead,
            "from_stage": transition.from_stage,
            "to_stage": transition.to_stage,
            "kind": transition.kind.value,
            "rule": transition.rule,
            "source": event.source,
            "event_id": event.event_id,
            "event_type": event.type,
            "occurred_at": occurred_at,
        }
        self.transitions.append(row)
        return row


def fold_all(funnel: Funnel, lead: str, events: Iterable[_EventRow]) -> _LeadFold:
    result = _LeadFold(None, None, None, None)
    for event in sorted(events, key=lambda e: e.key):
        result.fold(funnel, lead, event)
    return result


@dataclass(frozen=True)
class _EventRow:
    source: str
    event_id: str
    type: str
    occurred_at: datetime

    @property
    def key(self) -> EventKey:
        return event_key(self.occurred_at, self.source, self.event_id)


def change_id(*parts: object) -> str:
    """A deterministic id: the same change computed twice (a redelivery, a replay after
    a crash) has the same id, so consumers can drop repeats."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _changed(funnel: Funnel, transition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event": "LeadStageChanged",
        "schema_version": 1,
        "change_id": change_id(
            funnel.name,
            transition["lead_key"],
            transition["source"],
            transition["event_id"],
            transition["to_stage"],
            transition["kind"],
        ),
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "lead_id": transition["lead_key"],
        "from_stage": transition["from_stage"],
        "to_stage": transition["to_stage"],
        "transition": transition["kind"],
        "rule": transition["rule"],
        "caused_by": {
            "source": transition["source"],
            "event_id": transition["event_id"],
            "type": transition["event_type"],
        },
        "occurred_at": transition["occurred_at"].isoformat(),
    }


def _corrected(
    funnel: Funnel, lead: str, event: _EventRow, fold: _LeadFold, withdrawn: list[str]
) -> dict[str, Any]:
    return {
        "event": "LeadHistoryCorrected",
        "schema_version": 1,
        "change_id": change_id("corrected", funnel.name, lead, event.source, event.event_id),
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "lead_id": lead,
        "stage": fold.position.stage if fold.position else None,
        "stage_entered_at": fold.position.entered_at.isoformat() if fold.position else None,
        "withdrawn_change_ids": withdrawn,
        "caused_by": {"source": event.source, "event_id": event.event_id, "type": event.type},
        "occurred_at": event.occurred_at.isoformat(),
    }


def _transition_identity(row: Mapping[str, Any]) -> tuple[object, ...]:
    return (row["source"], row["event_id"], row["to_stage"], row["kind"], row["from_stage"])


async def _advance_leads(
    session: AsyncSession, funnel: Funnel, fresh: Sequence[Touchpoint], outbox_topic: str
) -> int:
    """Fold the batch's new events into each lead's state, in event time.

    Each lead's new events are taken in arrival order. One that comes after every
    event already folded continues the fold. A late one (it belongs before events
    already folded) refolds the lead from its stored touchpoints, so the result
    equals processing every event in time order. Every change goes to the outbox
    in the same transaction: a ``LeadStageChanged`` per new transition, and a
    ``LeadHistoryCorrected`` (naming the withdrawn changes) when a late event
    rewrites history. Which changes are published depends only on the arrival
    order of the events, never on how they were split into batches.
    """
    arrivals: dict[str, list[_EventRow]] = {}
    for tp in fresh:
        arrivals.setdefault(tp.lead_key, []).append(
            _EventRow(tp.source, tp.event_id, str(tp.type), tp.occurred_at)
        )
    lead_keys = sorted(arrivals)
    # FOR UPDATE: a lead lives on one partition, hence one engine process; the lock
    # also guards replays running beside live work.
    existing = await session.execute(
        select(LeadStage)
        .where(LeadStage.funnel == funnel.name, LeadStage.lead_key.in_(lead_keys))
        .with_for_update()
    )
    folds: dict[str, _LeadFold] = {}
    for row in existing.scalars():
        last = (
            (row.last_event_source, row.last_event_id)
            if row.last_event_source is not None and row.last_event_id is not None
            else None
        )
        folds[row.lead_key] = _LeadFold(
            Position(row.stage, row.stage_entered_at), row.first_touch_at, row.last_touch_at, last
        )

    # A lead whose stored history must be read: a new lead (its earlier touches may
    # have moved nothing but still count), or one with a late event.
    needs_history = [
        lead
        for lead in lead_keys
        if lead not in folds
        or folds[lead].last_key is None
        or any(e.key <= folds[lead].last_key for e in arrivals[lead])  # type: ignore[operator]
        or any(a.key > b.key for a, b in itertools.pairwise(arrivals[lead]))
    ]
    history: dict[str, list[_EventRow]] = {lead: [] for lead in needs_history}
    if needs_history:
        fresh_ids = {(tp.source, tp.event_id) for tp in fresh}
        rows = await session.execute(
            select(
                StoredTouchpoint.lead_key,
                StoredTouchpoint.source,
                StoredTouchpoint.event_id,
                StoredTouchpoint.type,
                StoredTouchpoint.occurred_at,
            ).where(StoredTouchpoint.lead_key.in_(needs_history))
        )
        for lead, source, event_id, event_type, occurred_at in rows:
            if (source, event_id) not in fresh_ids:  # history before this batch
                history[lead].append(_EventRow(source, event_id, event_type, occurred_at))

    rewritten: set[str] = set()
    new_transitions: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for lead in lead_keys:
        seen = history.get(lead)
        fold = folds.get(lead)
        if seen is not None:
            fold = fold_all(funnel, lead, seen)  # equals the stored state
        assert fold is not None  # noqa: S101 - every lead has a state or a history
        for event in arrivals[lead]:
            folded_up_to = fold.last_key
            if folded_up_to is None or event.key > folded_up_to:
                transition = fold.fold(funnel, lead, event)
                if transition is not None:
                    new_transitions.append(transition)
                    outbox.append(_outbox_row(outbox_topic, lead, _changed(funnel, transition)))
                if seen is not None:
                    seen.append(event)
                continue
            # A late event: refold, then publish the difference.
            assert seen is not None  # noqa: S101 - late leads had their history read
            seen.append(event)
            refolded = fold_all(funnel, lead, seen)
            before = {_transition_identity(t): t for t in fold.transitions}
            after = {_transition_identity(t): t for t in refolded.transitions}
            withdrawn = [
                _changed(funnel, t)["change_id"] for k, t in before.items() if k not in after
            ]
            correction = _corrected(funnel, lead, event, refolded, withdrawn)
            outbox.append(_outbox_row(outbox_topic, lead, correction))
            outbox.extend(
                _outbox_row(outbox_topic, lead, _changed(funnel, t))
                for k, t in after.items()
                if k not in before
            )
            fold = refolded
            rewritten.add(lead)
        folds[lead] = fold

    if rewritten:
        await session.execute(
            delete(LeadTransition).where(
                LeadTransition.funnel == funnel.name,
                LeadTransition.lead_key.in_(sorted(rewritten)),
            )
        )
    transitions = [t for t in new_transitions if t["lead_key"] not in rewritten] + [
        t for lead in sorted(rewritten) for t in folds[lead].transitions
    ]
    upserts = [
        {
            "funnel": funnel.name,
            "lead_key": lead,
            "stage": fold.position.stage,
            "stage_entered_at": fold.position.entered_at,
            "first_touch_at": fold.first_touch_at,
            "last_touch_at": fold.last_touch_at,
            "last_event_source": fold.last_event[0] if fold.last_event else None,
            "last_event_id": fold.last_event[1] if fold.last_event else None,
        }
        for lead, fold in sorted(folds.items())
        if fold.position is not None
    ]
    if upserts:
        statement = insert(table(LeadStage))
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["funnel", "lead_key"],
                set_={
                    "stage": statement.excluded.stage,
                    "stage_entered_at": statement.excluded.stage_entered_at,
                    "first_touch_at": statement.excluded.first_touch_at,
                    "last_touch_at": statement.excluded.last_touch_at,
                    "last_event_source": statement.excluded.last_event_source,
                    "last_event_id": statement.excluded.last_event_id,
                    "updated_at": func.now(),
                },
            ),
            upserts,
        )
    if transitions:
        await session.execute(insert(table(LeadTransition)), transitions)
    if outbox:
        await session.execute(insert(table(OutboxRecord)), outbox)
    return len(transitions)


def _outbox_row(topic: str, lead: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "topic": topic,
        "key": lead.encode(),
        "change_id": payload["change_id"],
        "payload": json.dumps(payload, separators=(",", ":")).encode(),
    }


async def store_offsets(
    session: AsyncSession, consumer_group: str, offsets: dict[TopicPartition, int]
) -> None:
    if not offsets:
        return
    statement = insert(ConsumerOffset)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["consumer_group", "topic", "partition"],
            # Never backwards: a late batch of a partition that moved on cannot
            # rewind the position another member already stored.
            set_={
                "next_offset": func.greatest(
                    ConsumerOffset.__table__.c.next_offset, statement.excluded.next_offset
                ),
                "updated_at": func.now(),
            },
        ),
        [
            {
                "consumer_group": consumer_group,
                "topic": tp.topic,
                "partition": tp.partition,
                "next_offset": offset,
            }
            for tp, offset in offsets.items()
        ],
    )


async def load_offsets(
    session: AsyncSession, consumer_group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    wanted = set(partitions)
    rows = await session.execute(
        select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset).where(
            ConsumerOffset.consumer_group == consumer_group,
            ConsumerOffset.topic.in_({tp.topic for tp in wanted}),
        )
    )
    return {
        TopicPartition(topic, partition): offset
        for topic, partition, offset in rows
        if TopicPartition(topic, partition) in wanted
    }
