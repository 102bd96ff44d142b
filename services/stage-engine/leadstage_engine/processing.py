"""Applying a batch of touchpoint records to lead state, set-based.

:func:`apply_batch` runs inside the caller's transaction and never commits:
the consumer owns the unit of work, so state and consumed offsets land in
PostgreSQL together or not at all.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage import compact_json
from leadstage.db.bulk import copy_rows, upsert_rows
from leadstage.db.models import (
    ConsumerOffset,
    LeadScoreChange,
    LeadStage,
    LeadTransition,
    OutboxRecord,
    StoredTouchpoint,
    table,
)
from leadstage.events import Touchpoint
from leadstage.funnels import Change, EventView, Funnel, LeadState
from leadstage.http import validation_details
from leadstage.rollup import mark_leads
from leadstage.transport.base import Record, TopicPartition
from leadstage_engine.accounts import LeadChanges, advance_accounts
from leadstage_engine.changes import change_id, outbox_row
from leadstage_engine.merges import SWEEP_MARGIN as MERGE_SWEEP_MARGIN
from leadstage_engine.merges import Rehoming, rehome, unapplied_merge_targets
from leadstage_engine.merges import outbox_rows as merges_outbox

logger = logging.getLogger(__name__)

SKIPPED_RULES = Counter(
    "leadstage_engine_rules_skipped_total",
    "Rules skipped on an event because a condition could not be evaluated (bad property).",
    ["funnel", "rule"],
)


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
    account_transitions: int = 0


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
    outbox_topic: str,
    account_topic: str | None = None,
) -> BatchOutcome:
    """Store the batch's touchpoints, move leads and their accounts, and record the
    consumed offsets.

    ``account_topic``: where account changes are published (the engine always passes
    it; None keeps account state without publishing its changes).
    """
    parsed, rejected = parse_records(records)
    outcome = BatchOutcome(next_offsets=next_offsets(records), rejected=rejected)

    fresh = await _store_touchpoints(session, parsed)
    outcome.stored = len(fresh)
    outcome.duplicates = len(parsed) - len(fresh)
    if fresh:
        changes = await _advance_leads(session, funnels, fresh, outbox_topic)
        await mark_leads(session, changes.leads)  # for the funnel summary's rollup
        outcome.transitions = sum(len(t) for t in changes.transitions.values())
        outcome.account_transitions = await advance_accounts(
            session, funnels, changes, account_topic
        )
    await store_offsets(session, consumer_group, outcome.next_offsets)
    return outcome


_INSERT_TOUCHPOINTS = text(
    "INSERT INTO touchpoints (event_id, lead_key, type, occurred_at, received_at, source,"
    ' payload, topic, partition, "offset")'
    " SELECT event_id, lead_key, type, occurred_at, received_at, source,"
    ' CAST(payload AS jsonb), topic, partition, "offset"'
    " FROM unnest(CAST(:event_ids AS text[]), CAST(:lead_keys AS text[]),"
    " CAST(:types AS text[]), CAST(:occurred_ats AS timestamptz[]),"
    " CAST(:received_ats AS timestamptz[]), CAST(:sources AS text[]),"
    " CAST(:payloads AS text[]), CAST(:topics AS text[]), CAST(:partitions AS int[]),"
    " CAST(:offsets AS bigint[]))"
    " AS t(event_id, lead_key, type, occurred_at, received_at, source, payload, topic,"
    ' partition, "offset")'
    " ON CONFLICT (source, event_id, occurred_at) DO NOTHING"
    " RETURNING source, event_id"
)


async def _store_touchpoints(
    session: AsyncSession, parsed: Sequence[tuple[Record, Touchpoint]]
) -> list[tuple[Touchpoint, Mapping[str, Any]]]:
    """Insert the touchpoints; return those not stored before, in arrival order.

    The primary key on (source, event_id, occurred_at) makes a redelivered or re-sent
    event a no-op (occurred_at is part of the record, and in the key because the table
    is partitioned by it).
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
    # One statement over arrays: its text is the same for every batch size (prepared
    # once per connection), and the driver binds ten arrays instead of ten parameters
    # per row.
    values = list(rows.values())
    inserted = await session.execute(
        _INSERT_TOUCHPOINTS,
        {
            "event_ids": [row["event_id"] for row in values],
            "lead_keys": [row["lead_key"] for row in values],
            "types": [str(row["type"]) for row in values],
            "occurred_ats": [row["occurred_at"] for row in values],
            "received_ats": [row["received_at"] for row in values],
            "sources": [row["source"] for row in values],
            "payloads": [compact_json.dumps(row["payload"]).decode() for row in values],
            "topics": [row["topic"] for row in values],
            "partitions": [row["partition"] for row in values],
            "offsets": [row["offset"] for row in values],
        },
    )
    new_ids = {(source, event_id) for source, event_id in inserted}
    fresh: list[tuple[Touchpoint, Mapping[str, Any]]] = []
    for _, touchpoint in parsed:
        key = (touchpoint.source, touchpoint.event_id)
        if key in new_ids:
            new_ids.discard(key)  # a repeat inside the batch counts once
            fresh.append((touchpoint, rows[key]["payload"]))
    return fresh


EventKey = tuple[datetime, str, str]


def event_key(occurred_at: datetime, source: str, event_id: str) -> EventKey:
    """The total order the funnel sees events in: event time, then a stable tie-break."""
    return (occurred_at, source, event_id)


@dataclass(frozen=True)
class FoldedEvent:
    """A touchpoint as the funnels see it, in UTC (so every path serialises alike)."""

    view: EventView

    @cached_property
    def key(self) -> EventKey:
        # Cached: timelines sort and bisect by it hundreds of thousands of times a run.
        return event_key(self.view.occurred_at, self.view.source, self.view.event_id)

    @classmethod
    def from_payload(
        cls,
        source: str,
        event_id: str,
        event_type: str,
        occurred_at: datetime,
        payload: Mapping[str, Any],
    ) -> FoldedEvent:
        return cls(
            EventView(
                source=source,
                event_id=event_id,
                type=event_type,
                occurred_at=occurred_at.astimezone(UTC),
                channel=payload.get("channel"),
                utm=payload.get("utm") or {},
                properties=payload.get("properties") or {},
                account=payload.get("account") or {},
            )
        )


@dataclass
class _LeadFold:
    """One lead's state in one funnel, folded event by event in event-time order."""

    state: LeadState
    first_touch_at: datetime | None = None
    last_touch_at: datetime | None = None
    last_event: tuple[str, str] | None = None  # (source, event_id) of the last event folded
    transitions: list[dict[str, Any]] = field(default_factory=list)
    score_changes: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)  # published changes

    @property
    def last_key(self) -> EventKey | None:
        if self.last_event is None or self.last_touch_at is None:
            return None
        return event_key(self.last_touch_at, *self.last_event)

    def fold(
        self, funnel: Funnel, lead: str, event: FoldedEvent, history: Sequence[EventView]
    ) -> list[dict[str, Any]]:
        """Apply one event that comes after every event folded so far; return the new
        facts to publish."""
        view = event.view
        at = view.occurred_at
        self.first_touch_at = min(self.first_touch_at or at, at)
        self.last_touch_at = max(self.last_touch_at or at, at)
        self.last_event = (view.source, view.event_id)
        result = funnel.step(self.state, view, history)
        for rule, reason in result.skipped:
            logger.warning(
                "rule skipped funnel=%s rule=%s source=%s event_id=%s reason=%s",
                funnel.name,
                rule,
                view.source,
                view.event_id,
                reason,
            )
            SKIPPED_RULES.labels(funnel.name, rule).inc()
        self.state = result.state
        facts: list[dict[str, Any]] = []
        caused_by = {"source": view.source, "event_id": view.event_id, "event_type": view.type}
        for change in result.changes:
            if change.kind == "stage":
                transition = {
                    "funnel": funnel.name,
                    "lead_key": lead,
                    "from_stage": change.from_stage,
                    "to_stage": change.to_stage,
                    "kind": str(change.transition),
                    "rule": change.rule,
                    **caused_by,
                    "occurred_at": at,
                }
                self.transitions.append(transition)
                facts.append(_changed(funnel, transition))
            elif change.kind == "score":
                self.score_changes.append(
                    {
                        "funnel": funnel.name,
                        "lead_key": lead,
                        "score": change.score,
                        "delta": change.delta,
                        "value": change.value,
                        "rule": change.rule,
                        **caused_by,
                        "occurred_at": at,
                    }
                )
            else:  # a threshold crossed, or the sales-ready flag changed
                facts.append(_fact(funnel, lead, change, view))
        self.facts.extend(facts)
        return facts


def _fact(funnel: Funnel, lead: str, change: Change, view: EventView) -> dict[str, Any]:
    name = "LeadScoreThresholdCrossed" if change.kind == "threshold" else "LeadSalesReadyChanged"
    return {
        "event": name,
        "schema_version": 1,
        "change_id": change_id(
            funnel.name,
            lead,
            view.source,
            view.event_id,
            change.kind,
            change.rule,
            change.sales_ready,
        ),
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "lead_id": lead,
        "rule": change.rule,
        "score": change.score,
        "value": change.value,
        "sales_ready": change.sales_ready,
        "caused_by": {"source": view.source, "event_id": view.event_id, "type": view.type},
        "occurred_at": view.occurred_at.isoformat(),
    }


class LeadTimeline:
    """One lead's events in event-time order, for the counted-window rules' history."""

    def __init__(self, events: Iterable[FoldedEvent] = ()) -> None:
        self.events = sorted(events, key=lambda e: e.key)

    def add(self, event: FoldedEvent) -> None:
        bisect.insort(self.events, event, key=lambda e: e.key)

    def before(self, event: FoldedEvent, window: timedelta) -> list[EventView]:
        end = bisect.bisect_left(self.events, event.key, key=lambda e: e.key)
        start = (
            bisect.bisect_left(
                self.events, event.view.occurred_at - window, key=lambda e: e.view.occurred_at
            )
            if window
            else end
        )
        return [e.view for e in self.events[start:end]]


def fold_all(funnel: Funnel, lead: str, timeline: LeadTimeline) -> _LeadFold:
    result = _LeadFold(LeadState())
    for event in timeline.events:
        result.fold(funnel, lead, event, timeline.before(event, funnel.history_window))
    return result


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
    funnel: Funnel, lead: str, event: FoldedEvent, fold: _LeadFold, withdrawn: list[str]
) -> dict[str, Any]:
    view = event.view
    return {
        "event": "LeadHistoryCorrected",
        "schema_version": 1,
        "change_id": change_id("corrected", funnel.name, lead, view.source, view.event_id),
        "funnel": funnel.name,
        "funnel_version": funnel.version,
        "lead_id": lead,
        "stage": fold.state.stage,
        "stage_entered_at": (
            fold.state.stage_entered_at.isoformat() if fold.state.stage_entered_at else None
        ),
        "sales_ready": fold.state.sales_ready,
        "withdrawn_change_ids": withdrawn,
        "caused_by": {"source": view.source, "event_id": view.event_id, "type": view.type},
        "occurred_at": view.occurred_at.isoformat(),
    }


async def _advance_leads(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    fresh: Sequence[tuple[Touchpoint, Mapping[str, Any]]],
    outbox_topic: str,
    *,
    canonical: Sequence[str] = (),
) -> LeadChanges:
    """Fold the batch's new events into each lead's state in every funnel, in event time.

    Each lead's new events are taken in arrival order. One that comes after every
    event already folded continues the fold. A late one (it belongs before events
    already folded) refolds the lead from its stored touchpoints, so the result
    equals processing every event in time order. Every change goes to the outbox
    in the same transaction: a ``LeadStageChanged`` per new transition (and
    threshold and sales-ready facts), and a ``LeadHistoryCorrected`` naming the
    withdrawn changes when a late event rewrites history. Which changes are
    published depends only on the arrival order of the events, never on how they
    were split into batches.

    Identity merges (see :mod:`leadstage_engine.merges`) are followed once the
    leads' rows are locked: a merged lead's events go to its canonical lead, and a
    lead that absorbs another now is refolded from both leads' touchpoints (its
    withdrawn changes in a ``LeadHistoryCorrected``, a ``LeadMerged`` for the
    absorbed lead). ``canonical``: leads to take up even without new events (the
    merge sweep's).
    """
    names = [funnel.name for funnel in funnels]

    def arriving(remap: Mapping[str, str]) -> dict[str, list[FoldedEvent]]:
        events: dict[str, list[FoldedEvent]] = {remap.get(lead, lead): [] for lead in canonical}
        for tp, payload in fresh:
            events.setdefault(remap.get(tp.lead_key, tp.lead_key), []).append(
                FoldedEvent.from_payload(
                    tp.source, tp.event_id, str(tp.type), tp.occurred_at, payload
                )
            )
        return events

    async def lock_and_load(leads: Sequence[str]) -> dict[tuple[str, str], _LeadFold]:
        # FOR UPDATE: a lead lives on one partition, hence one engine process; the
        # lock also guards replays running beside live work, and the merges.
        # Plain columns, not ORM entities: nothing here is changed through the session,
        # and building thousands of tracked objects per batch costs CPU for nothing.
        existing = await session.execute(
            select(
                LeadStage.funnel,
                LeadStage.lead_key,
                LeadStage.state,
                LeadStage.first_touch_at,
                LeadStage.last_touch_at,
                LeadStage.last_event_source,
                LeadStage.last_event_id,
            )
            .where(LeadStage.funnel.in_(names), LeadStage.lead_key.in_(leads))
            .with_for_update()
        )
        loaded: dict[tuple[str, str], _LeadFold] = {}
        for funnel, lead, state, first_at, last_at, last_source, last_id in existing:
            last = (
                (last_source, last_id) if last_source is not None and last_id is not None else None
            )
            loaded[(funnel, lead)] = _LeadFold(LeadState.from_dict(state), first_at, last_at, last)
        return loaded

    arrivals = arriving({})
    lead_keys = sorted(arrivals)
    stored = await lock_and_load(lead_keys)
    rehoming = await rehome(session, lead_keys) or Rehoming()
    outbox: list[dict[str, Any]] = merges_outbox(outbox_topic, rehoming)
    if rehoming.remap or rehoming.refold:
        arrivals = arriving(rehoming.remap)
        for lead in rehoming.refold:
            arrivals.setdefault(lead, [])
        lead_keys = sorted(arrivals)
        stored = await lock_and_load(lead_keys)

    def in_order(funnel: Funnel, lead: str) -> bool:
        fold = stored.get((funnel.name, lead))
        last = fold.last_key if fold else None
        events = arrivals[lead]
        return (
            last is not None
            and all(e.key > last for e in events)
            and all(a.key < b.key for a, b in itertools.pairwise(events))
        )

    # Leads folded again from everything stored: new leads (earlier touches that moved
    # nothing still count), leads with a late event in some funnel, and leads that
    # absorbed another lead's history.
    full = sorted(
        {lead for lead in lead_keys for f in funnels if not in_order(f, lead)}
        | set(rehoming.refold)
    )
    window = max((f.history_window for f in funnels), default=timedelta(0))
    refolded_in_full = set(full)
    partial = [lead for lead in lead_keys if lead not in refolded_in_full] if window else []
    earlier: dict[str, list[FoldedEvent]] = {lead: [] for lead in lead_keys}
    fresh_ids = {(tp.source, tp.event_id) for tp, _ in fresh}
    for leads, since in (
        (full, None),
        (
            partial,
            min((e.view.occurred_at for lead in partial for e in arrivals[lead]), default=None),
        ),
    ):
        if not leads:
            continue
        # Leads that continue their fold: their history only feeds the counted-window
        # rules, which look at an event's type and properties. Reading the properties
        # alone keeps the rest of each payload off the wire and out of the JSON decoder
        # (decoding whole payloads was a tenth of the engine's CPU at 30,000 leads).
        properties_only = since is not None
        query = select(
            StoredTouchpoint.lead_key,
            StoredTouchpoint.source,
            StoredTouchpoint.event_id,
            StoredTouchpoint.type,
            StoredTouchpoint.occurred_at,
            StoredTouchpoint.payload["properties"] if properties_only else StoredTouchpoint.payload,
        ).where(StoredTouchpoint.lead_key.in_(leads))
        if since is not None:
            # Only the counted-window rules' span and event types (full refolds need
            # every event).
            query = query.where(StoredTouchpoint.occurred_at >= since - window)
            types = counted_types(funnels)
            if types is not None:
                query = query.where(StoredTouchpoint.type.in_(sorted(types)))
        for lead, source, event_id, event_type, occurred_at, values in await session.execute(query):
            if (source, event_id) not in fresh_ids:  # history from before this batch
                payload = {"properties": values} if properties_only else values
                earlier[lead].append(
                    FoldedEvent.from_payload(source, event_id, event_type, occurred_at, payload)
                )
    # Sorted once per lead, not inserted one by one.
    timelines = {lead: LeadTimeline(events) for lead, events in earlier.items()}

    rewritten: set[tuple[str, str]] = set()
    folds: dict[tuple[str, str], _LeadFold] = {}
    for lead in lead_keys:
        timeline = timelines[lead]
        for funnel in funnels:
            key = (funnel.name, lead)
            if lead in rehoming.refold:
                # Refold with the absorbed leads' touchpoints; publish the difference
                # from what this lead's own touchpoints gave.
                own = LeadTimeline(
                    e
                    for e in timeline.events
                    if (e.view.source, e.view.event_id) not in rehoming.moved
                )
                refolded = fold_all(funnel, lead, timeline)
                outbox.extend(
                    outbox_row(outbox_topic, lead, fact)
                    for fact in _merge_facts(
                        funnel, lead, fold_all(funnel, lead, own), refolded, rehoming
                    )
                )
                folds[key] = refolded
                rewritten.add(key)
                continue
            # A stored state, or (full refold) the fold of everything stored so far,
            # which equals the stored state.
            fold = stored.get(key) if lead not in full else None
            if fold is None:
                fold = fold_all(funnel, lead, timeline)
                fold.transitions, fold.score_changes, fold.facts = [], [], []
            folds[key] = fold
        for event in arrivals[lead]:
            for funnel in funnels:
                key = (funnel.name, lead)
                fold = folds[key]
                folded_up_to = fold.last_key
                if folded_up_to is None or event.key > folded_up_to:
                    history = timeline.before(event, funnel.history_window)
                    outbox.extend(
                        outbox_row(outbox_topic, lead, fact)
                        for fact in fold.fold(funnel, lead, event, history)
                    )
                    continue
                # A late event: refold, then publish the difference.
                with_late = LeadTimeline([*timeline.events, event])
                before_fold = fold_all(funnel, lead, timeline)
                refolded = fold_all(funnel, lead, with_late)
                before = {f["change_id"]: f for f in before_fold.facts}
                after = {f["change_id"]: f for f in refolded.facts}
                withdrawn = sorted(c for c in before if c not in after)
                outbox.append(
                    outbox_row(
                        outbox_topic, lead, _corrected(funnel, lead, event, refolded, withdrawn)
                    )
                )
                outbox.extend(
                    outbox_row(outbox_topic, lead, f) for c, f in after.items() if c not in before
                )
                folds[key] = refolded
                rewritten.add(key)
            timeline.add(event)

    if rewritten:
        for funnel_name in sorted({name for name, _ in rewritten}):
            leads = sorted(lead for name, lead in rewritten if name == funnel_name)
            for model in (LeadTransition, LeadScoreChange):
                await session.execute(
                    delete(model).where(model.funnel == funnel_name, model.lead_key.in_(leads))
                )
    transitions = [t for key, fold in sorted(folds.items()) for t in fold.transitions]
    score_changes = [c for key, fold in sorted(folds.items()) for c in fold.score_changes]
    upserts = [
        {
            "funnel": funnel_name,
            "lead_key": lead,
            "funnel_version": versions[funnel_name],
            "stage": fold.state.stage,
            "stage_entered_at": fold.state.stage_entered_at,
            "sales_ready": fold.state.sales_ready,
            "state": fold.state.to_dict(),
            "first_touch_at": fold.first_touch_at,
            "last_touch_at": fold.last_touch_at,
            "last_event_source": fold.last_event[0] if fold.last_event else None,
            "last_event_id": fold.last_event[1] if fold.last_event else None,
        }
        for (funnel_name, lead), fold in sorted(folds.items())
        if fold.last_event is not None
        for versions in [{f.name: f.version for f in funnels}]
    ]
    await upsert_rows(session, table(LeadStage), upserts, key=("funnel", "lead_key"))
    await copy_rows(session, table(LeadTransition), transitions)
    await copy_rows(session, table(LeadScoreChange), score_changes)
    await copy_rows(session, table(OutboxRecord), outbox)
    return LeadChanges(
        leads=sorted({*lead_keys, *rehoming.absorbed}),
        transitions={key: fold.transitions for key, fold in folds.items() if fold.transitions},
        rewritten=rewritten,
        new={key for key in folds if key not in stored},
        merged=rehoming.absorbed,
    )


def counted_types(funnels: Sequence[Funnel]) -> frozenset[str] | None:
    """The event types the funnels' counted-window rules count (None: any type)."""
    types: set[str] = set()
    for funnel in funnels:
        for rule in funnel.rules:
            count = rule.when.count
            if count is None:
                continue
            counted = count.type if count.type is not None else rule.when.type
            if counted is None:
                return None
            types.update(str(t) for t in counted)
    return frozenset(types)


def _merge_facts(
    funnel: Funnel, lead: str, before: _LeadFold, after: _LeadFold, rehoming: Rehoming
) -> list[dict[str, Any]]:
    """What a lead's refold with the histories it absorbed changes in what was
    published: a correction naming the withdrawn changes, then the new ones."""
    old = {f["change_id"]: f for f in before.facts}
    new = {f["change_id"]: f for f in after.facts}
    withdrawn = sorted(c for c in old if c not in new)
    absorbed = sorted(rehoming.refold[lead])
    facts: list[dict[str, Any]] = []
    if withdrawn:
        facts.append(
            {
                "event": "LeadHistoryCorrected",
                "schema_version": 1,
                "change_id": change_id("merged", funnel.name, lead, *absorbed),
                "funnel": funnel.name,
                "funnel_version": funnel.version,
                "lead_id": lead,
                "stage": after.state.stage,
                "stage_entered_at": (
                    after.state.stage_entered_at.isoformat()
                    if after.state.stage_entered_at
                    else None
                ),
                "sales_ready": after.state.sales_ready,
                "withdrawn_change_ids": withdrawn,
                "caused_by": {"merged_lead_ids": absorbed},
                "occurred_at": None,
            }
        )
    facts.extend(f for c, f in new.items() if c not in old)
    return facts


async def sweep_merges(
    session: AsyncSession,
    funnels: Sequence[Funnel],
    *,
    outbox_topic: str,
    account_topic: str | None,
    since: datetime | None,
    limit: int = 200,
) -> tuple[list[str], datetime | None]:
    """Apply the merges committed after the engine folded the event that caused them
    (that batch could not see them). Looks at merges recorded since ``since`` (all if
    None); returns the canonical leads refolded and the ``since`` for next time."""
    locked = await session.scalar(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended('leadstage-merge-sweep', 0))")
    )
    if not locked:
        return [], since  # another engine process is sweeping
    started = await session.scalar(select(func.now()))
    targets = await unapplied_merge_targets(
        session, [f.name for f in funnels], since=since, limit=limit
    )
    if targets:
        changes = await _advance_leads(session, funnels, [], outbox_topic, canonical=targets)
        await mark_leads(session, changes.leads)
        await advance_accounts(session, funnels, changes, account_topic)
        logger.info("applied identity merges into %s leads", len(targets))
    if len(targets) == limit or started is None:
        return targets, since
    return targets, started - MERGE_SWEEP_MARGIN


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
