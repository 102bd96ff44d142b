"""Applying a batch of touchpoint records to lead state, set-based.

:func:`apply_batch` runs inside the caller's transaction and never commits:
the consumer owns the unit of work, so state and consumed offsets land in
PostgreSQL together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import ConsumerOffset, LeadStage, LeadTransition, StoredTouchpoint
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
) -> BatchOutcome:
    """Store the batch's touchpoints, move leads, and record the consumed offsets."""
    parsed, rejected = parse_records(records)
    outcome = BatchOutcome(next_offsets=next_offsets(records), rejected=rejected)

    fresh = await _store_touchpoints(session, parsed)
    outcome.stored = len(fresh)
    outcome.duplicates = len(parsed) - len(fresh)
    if fresh:
        for funnel in funnels:
            outcome.transitions += await _advance_leads(session, funnel, fresh)
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


@dataclass
class _LeadState:
    position: Position | None
    first_touch_at: datetime
    last_touch_at: datetime
    changed: bool = False


async def _advance_leads(session: AsyncSession, funnel: Funnel, fresh: Sequence[Touchpoint]) -> int:
    lead_keys = sorted({touchpoint.lead_key for touchpoint in fresh})
    # FOR UPDATE: with several engine processes a lead lives on one partition,
    # hence one process; the lock also guards replays running beside live work.
    existing = await session.execute(
        select(LeadStage)
        .where(LeadStage.funnel == funnel.name, LeadStage.lead_key.in_(lead_keys))
        .with_for_update()
    )
    states: dict[str, _LeadState] = {
        row.lead_key: _LeadState(
            Position(row.stage, row.stage_entered_at), row.first_touch_at, row.last_touch_at
        )
        for row in existing.scalars()
    }
    new_leads = [key for key in lead_keys if key not in states]
    first_touches: dict[str, datetime] = {}
    if new_leads:
        # A lead enters the funnel with its earliest stored touch as first touch,
        # including touches that moved it nowhere.
        first = await session.execute(
            select(StoredTouchpoint.lead_key, func.min(StoredTouchpoint.occurred_at))
            .where(StoredTouchpoint.lead_key.in_(new_leads))
            .group_by(StoredTouchpoint.lead_key)
        )
        first_touches = {key: at for key, at in first}

    transitions: list[dict[str, object]] = []
    for touchpoint in fresh:
        key = touchpoint.lead_key
        state = states.get(key)
        if state is not None:
            state.last_touch_at = max(state.last_touch_at, touchpoint.occurred_at)
            state.first_touch_at = min(state.first_touch_at, touchpoint.occurred_at)
            state.changed = True
        transition = funnel.apply(state.position if state else None, touchpoint.type)
        if transition is None:
            continue
        if state is None:
            first_touch = first_touches.get(key, touchpoint.occurred_at)
            state = states[key] = _LeadState(
                None, first_touch, max(first_touch, touchpoint.occurred_at)
            )
        state.position = Position(transition.to_stage, touchpoint.occurred_at)
        state.changed = True
        transitions.append(
            {
                "funnel": funnel.name,
                "lead_key": key,
                "from_stage": transition.from_stage,
                "to_stage": transition.to_stage,
                "kind": transition.kind.value,
                "rule": transition.rule,
                "source": touchpoint.source,
                "event_id": touchpoint.event_id,
                "event_type": touchpoint.type,
                "occurred_at": touchpoint.occurred_at,
            }
        )

    upserts = [
        {
            "funnel": funnel.name,
            "lead_key": key,
            "stage": state.position.stage,
            "stage_entered_at": state.position.entered_at,
            "first_touch_at": state.first_touch_at,
            "last_touch_at": state.last_touch_at,
        }
        for key, state in states.items()
        if state.changed and state.position is not None
    ]
    if upserts:
        statement = insert(LeadStage)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["funnel", "lead_key"],
                set_={
                    "stage": statement.excluded.stage,
                    "stage_entered_at": statement.excluded.stage_entered_at,
                    "first_touch_at": statement.excluded.first_touch_at,
                    "last_touch_at": statement.excluded.last_touch_at,
                    "updated_at": func.now(),
                },
            ),
            upserts,
        )
    if transitions:
        await session.execute(insert(LeadTransition), transitions)
    return len(transitions)


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
