"""Identity merges: a merged lead's history moves to the lead it was merged into.

Ingest records a merge in ``identity_merges`` when an identifier links two leads
(an anonymous visitor fills a form, an ``alias``). Events produced before the
merge carry the old lead's key and sit on its partition; events after it carry
the canonical lead's. The engine *re-homes* the old lead: its stored touchpoints
get the canonical lead's key (``payload.resolved_lead_id`` keeps what ingest
resolved at the time), its state and history rows are deleted, and the
canonical lead is refolded from the union of both leads' touchpoints in event
time. ``merged_leads`` records the move, so events of the old lead still in
flight are stored under, and folded into, the canonical lead.

When: in the batch that folds the canonical lead (its first event after the
merge is usually the event that caused it), after that batch has locked the
lead's rows; and, for a merge committed after its event was folded, by a sweep
that locks the canonical lead's rows first. Deleting the old lead's rows waits
for a batch of the old lead's partition in progress, and the touchpoints are
moved by a later statement, so they include that batch's: whichever commits
first, nothing is left behind. A batch that finds its lead's rows gone looks up
``merged_leads`` only after its lock, so it sees the merge and follows it.

One race has no lock to wait on: the old lead's *first* batch, still in progress
(another lane or process), has no committed rows for the delete to wait for. If it
commits between the delete and the touchpoint move, its touchpoint moves but its
transitions stay, and the canonical lead's refold then collides with them on
``(funnel, source, event_id)``. The batch fails with a unique violation, rolls back,
and the consumer retries it (``copy_rows`` raises a ``DBAPIError`` like any
statement); the retry sees the committed rows and deletes them. Seen once in CI
(session 9), where the driver's unwrapped error had stopped the engine instead.

Not handled: reverting a merge (``revert_merge``) does not split the history
again; the re-homed touchpoints keep their original lead in their payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import (
    IdentityMerge,
    LeadScoreChange,
    LeadStage,
    LeadTransition,
    MergedLead,
    table,
)
from leadstage_engine.changes import change_id, outbox_row

#: How far back the merge sweep looks before its previous run (``merged_at`` is the
#: start of ingest's transaction, which commits up to a produce timeout later).
SWEEP_MARGIN = timedelta(minutes=10)


@dataclass
class Rehoming:
    """What the merges did to one batch's leads."""

    # Every batch lead that is (now) merged, to the lead its events go to.
    remap: dict[str, str] = field(default_factory=dict)
    # Canonical leads that gained another lead's history now: refold them.
    refold: dict[str, list[str]] = field(default_factory=dict)  # canonical -> absorbed leads
    # (source, event_id) of the touchpoints moved by the merges applied now.
    moved: set[tuple[str, str]] = field(default_factory=set)
    facts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, payload)

    @property
    def absorbed(self) -> list[str]:
        return sorted(lead for leads in self.refold.values() for lead in leads)


async def rehome(session: AsyncSession, leads: Sequence[str]) -> Rehoming | None:
    """Follow the merges of the batch's leads (call it after their rows are locked):
    apply the merges into them not applied yet, and move the touchpoints of leads
    merged already to their canonical lead. None if no lead is concerned."""
    rows = (
        await session.execute(
            text(
                "SELECT 'merged' AS kind, ml.lead_key AS from_lead, ml.into_lead,"
                " NULL::bigint AS id, NULL AS reason, NULL AS event_id"
                " FROM merged_leads ml WHERE ml.lead_key = ANY(CAST(:leads AS text[]))"
                " UNION ALL"
                " SELECT 'pending', im.from_lead, im.into_lead, im.id, im.reason, im.event_id"
                " FROM identity_merges im"
                " WHERE im.reverted_at IS NULL AND im.from_lead <> im.into_lead"
                " AND (im.into_lead = ANY(CAST(:leads AS text[])) OR im.into_lead IN ("
                "  SELECT m.lead_key FROM merged_leads m"
                "  WHERE m.into_lead = ANY(CAST(:leads AS text[]))))"
                " AND NOT EXISTS (SELECT 1 FROM merged_leads done"
                "  WHERE done.lead_key = im.from_lead)"
                " ORDER BY 4 NULLS FIRST"
            ),
            {"leads": sorted(set(leads))},
        )
    ).mappings()
    merged: dict[str, str] = {}
    pending: list[Any] = []
    for row in rows:
        if row["kind"] == "merged":
            merged[row["from_lead"]] = row["into_lead"]
        else:
            pending.append(row)
    if not merged and not pending:
        return None

    final = dict(merged)  # lead -> the lead it is merged into (chains resolved below)
    targets = sorted({m["into_lead"] for m in pending} - set(final))
    if targets:  # a merge into a lead that was itself merged into a batch lead
        for lead, into in await session.execute(
            select(MergedLead.lead_key, MergedLead.into_lead).where(
                MergedLead.lead_key.in_(targets)
            )
        ):
            final[lead] = into

    def resolve(lead: str) -> str:
        seen = {lead}
        while lead in final and final[lead] not in seen:
            lead = final[lead]
            seen.add(lead)
        return lead

    applied: list[tuple[Any, str]] = []  # (merge row, target)
    for merge in pending:  # in merge order: a later merge may continue an earlier one
        absorbed, target = merge["from_lead"], resolve(merge["into_lead"])
        if absorbed in final or target == absorbed:
            continue
        final[absorbed] = target
        for lead, into in list(final.items()):
            if into == absorbed:
                final[lead] = target
        applied.append((merge, target))

    result = Rehoming()
    absorbed_now = sorted(merge["from_lead"] for merge, _ in applied)
    if absorbed_now:
        # Deleting waits for a batch of the absorbed lead in progress; what it stored
        # is then moved by the statements below.
        for model in (LeadStage, LeadTransition, LeadScoreChange):
            await session.execute(delete(model).where(model.lead_key.in_(absorbed_now)))
        merged_table = table(MergedLead)
        moves = {lead: resolve(lead) for lead in absorbed_now}
        await session.execute(
            text(
                "UPDATE merged_leads ml SET into_lead = m.into_lead"
                " FROM unnest(CAST(:froms AS text[]), CAST(:intos AS text[]))"
                " AS m(from_lead, into_lead) WHERE ml.into_lead = m.from_lead"
            ),
            {"froms": list(moves), "intos": list(moves.values())},
        )
        await session.execute(
            insert(merged_table),
            [
                {
                    "lead_key": merge["from_lead"],
                    "into_lead": resolve(merge["from_lead"]),
                    "merge_id": merge["id"],
                    "reason": merge["reason"],
                }
                for merge, _ in sorted(applied, key=lambda item: item[0]["from_lead"])
            ],
        )
        for merge, _ in sorted(applied, key=lambda item: item[0]["id"]):
            target = resolve(merge["from_lead"])
            result.refold.setdefault(target, []).append(merge["from_lead"])
            result.facts.append((merge["from_lead"], _merged(merge, target)))
    result.remap = {lead: resolve(lead) for lead in sorted(set(leads)) if lead in final}
    movers = sorted({*absorbed_now, *result.remap})
    if movers:
        for source, event_id, from_lead in await session.execute(
            text(
                "UPDATE touchpoints t SET lead_key = m.into_lead"
                " FROM unnest(CAST(:froms AS text[]), CAST(:intos AS text[]))"
                " AS m(from_lead, into_lead) WHERE t.lead_key = m.from_lead"
                " RETURNING t.source, t.event_id, m.from_lead"
            ),
            {"froms": movers, "intos": [resolve(lead) for lead in movers]},
        ):
            if from_lead in absorbed_now:
                result.moved.add((source, event_id))
    return result


def _merged(merge: Any, target: str) -> dict[str, Any]:
    return {
        "event": "LeadMerged",
        "schema_version": 1,
        "change_id": change_id("merged", merge["from_lead"], target, merge["id"]),
        "lead_id": merge["from_lead"],
        "into_lead_id": target,
        "reason": merge["reason"],
        "caused_by": {"event_id": merge["event_id"]},
    }


def outbox_rows(topic: str, rehoming: Rehoming) -> list[dict[str, Any]]:
    return [outbox_row(topic, key, payload) for key, payload in rehoming.facts]


async def unapplied_merge_targets(
    session: AsyncSession, funnels: Sequence[str], *, since: datetime | None, limit: int
) -> list[str]:
    """Canonical leads (folded by the engine already) with merges into them that the
    engine has not applied: their event was folded before the merge was committed."""
    follow = table(MergedLead).alias("follow")
    target = func.coalesce(follow.c.into_lead, IdentityMerge.into_lead)
    query = (
        select(target)
        .select_from(IdentityMerge)
        .outerjoin(follow, follow.c.lead_key == IdentityMerge.into_lead)
        .where(
            IdentityMerge.reverted_at.is_(None),
            IdentityMerge.from_lead != IdentityMerge.into_lead,
            ~select(MergedLead.lead_key)
            .where(MergedLead.lead_key == IdentityMerge.from_lead)
            .exists(),
            select(LeadStage.lead_key)
            .where(LeadStage.funnel.in_(funnels), LeadStage.lead_key == target)
            .exists(),
        )
        .distinct()
        .order_by(target)
        .limit(limit)
    )
    if since is not None:
        query = query.where(IdentityMerge.merged_at >= since)
    return list(await session.scalars(query))
