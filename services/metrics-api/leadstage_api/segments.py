"""Who a funnel report counts: the unit (lead or account), filters and one breakdown.

Every analytics report (and the funnel summary) measures a *population*: the leads of
one funnel, optionally grouped into accounts, narrowed by segment filters and split
by one breakdown dimension. :func:`members` is that population as one SQL subquery of
``(lead_key, unit_key, segment)``; a report joins its lead-level facts to it and
groups by ``unit_key`` (and ``segment``).

Where each dimension comes from:

- ``industry``, ``country``, ``tier`` and ``size_band`` (bands of ``employee_count``)
  are the account's firmographics, through ``lead_accounts`` (as ingest attached the
  lead). A lead with no account has none of them.
- ``channel``, ``campaign`` (``utm.name``, i.e. utm_campaign) and ``source``
  (``utm.source``, i.e. utm_source) come from the unit's *first touch*: its earliest
  stored touchpoint (ties broken by source and event id), whatever that touch
  carries. A first touch without a channel leaves the lead with no channel, even if
  a later touch has one: first-touch segments must not change as a lead ages.

The account unit counts an account (its contacts are the leads attached to it in
``lead_accounts``; leads without an account are left out). An account reaches a stage
when its first contact does (its furthest contact), see :mod:`leadstage_api.reach`.
Its first touch is the earliest touch of any of its contacts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from fastapi import Query, status
from sqlalchemy import CTE, ColumnElement, String, case, cast, literal, null, select
from sqlalchemy.dialects.postgresql import distinct_on

from leadstage.db.models import Account, LeadAccount, LeadStage, StoredTouchpoint
from leadstage.events import Channel
from leadstage.firmographics import SIZE_BAND_FLOORS, SizeBand
from leadstage.firmographics import size_band as size_band  # re-exported for tests
from leadstage.funnels import Funnel
from leadstage.http import ApiError, ErrorDetail

MAX_FILTER_VALUES = 20


class Dimension(StrEnum):
    INDUSTRY = "industry"
    SIZE_BAND = "size_band"
    COUNTRY = "country"
    TIER = "tier"
    CHANNEL = "channel"
    CAMPAIGN = "campaign"
    SOURCE = "source"


FIRMOGRAPHIC = frozenset(
    {Dimension.INDUSTRY, Dimension.SIZE_BAND, Dimension.COUNTRY, Dimension.TIER}
)
FIRST_TOUCH = frozenset({Dimension.CHANNEL, Dimension.CAMPAIGN, Dimension.SOURCE})


class Unit(StrEnum):
    LEAD = "lead"
    ACCOUNT = "account"


@dataclass(frozen=True)
class Segmentation:
    """The unit, the filters (AND across dimensions, OR within one) and the breakdown."""

    unit: Unit = Unit.LEAD
    filters: Mapping[Dimension, tuple[str, ...]] = field(default_factory=dict)
    breakdown: Dimension | None = None

    def dimensions(self) -> set[Dimension]:
        wanted = set(self.filters)
        if self.breakdown is not None:
            wanted.add(self.breakdown)
        return wanted

    def echo(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "breakdown": self.breakdown,
            "filters": {str(d): list(v) for d, v in sorted(self.filters.items())},
        }


def _values(name: str, given: Sequence[str] | None) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in given or () if v.strip()))
    if len(values) > MAX_FILTER_VALUES:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "Too many filter values.",
            details=[ErrorDetail(field=name, reason=f"at most {MAX_FILTER_VALUES} values")],
        )
    for value in values:
        if len(value) > 255:
            raise ApiError(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "schema_violation",
                "Filter value too long.",
                details=[ErrorDetail(field=name, reason="at most 255 characters")],
            )
    return values


def segmentation_params(
    industry: Annotated[
        list[str] | None, Query(description="Account industry (repeat for several).")
    ] = None,
    size_band: Annotated[
        list[SizeBand] | None, Query(description="Account size band by employee count.")
    ] = None,
    country: Annotated[
        list[str] | None, Query(description="Account country, ISO 3166-1 alpha-2 (e.g. DE).")
    ] = None,
    tier: Annotated[list[int] | None, Query(description="Account tier, 1 = key account.")] = None,
    channel: Annotated[list[Channel] | None, Query(description="First touch's channel.")] = None,
    campaign: Annotated[
        list[str] | None, Query(description="First touch's UTM campaign (utm_campaign).")
    ] = None,
    source: Annotated[
        list[str] | None, Query(description="First touch's UTM source (utm_source).")
    ] = None,
    breakdown: Annotated[
        Dimension | None, Query(description="Also report the figures per value of this.")
    ] = None,
    unit: Annotated[
        Unit,
        Query(
            description="Count leads, or accounts (an account counts when its furthest "
            "contact does)."
        ),
    ] = Unit.LEAD,
) -> Segmentation:
    """The query parameters every analytics report shares."""
    given: dict[Dimension, tuple[str, ...]] = {
        Dimension.INDUSTRY: _values("industry", industry),
        Dimension.SIZE_BAND: _values("size_band", [str(b) for b in size_band or ()]),
        Dimension.COUNTRY: _values("country", [c.upper() for c in country or ()]),
        Dimension.TIER: _values("tier", [str(t) for t in tier or ()]),
        Dimension.CHANNEL: _values("channel", [str(c) for c in channel or ()]),
        Dimension.CAMPAIGN: _values("campaign", campaign),
        Dimension.SOURCE: _values("source", source),
    }
    return Segmentation(
        unit=unit, filters={d: v for d, v in given.items() if v}, breakdown=breakdown
    )


def members(funnel: Funnel, segmentation: Segmentation) -> CTE:
    """The population: one row per lead of the funnel that is counted,
    ``(lead_key, unit_key, segment)``; ``segment`` is NULL without a breakdown (and
    for a unit with no value for the breakdown dimension)."""
    by_account = segmentation.unit is Unit.ACCOUNT
    wanted = segmentation.dimensions()
    needs_account = by_account or bool(wanted & FIRMOGRAPHIC)

    lead = LeadStage
    unit_key = (LeadAccount.account_id if by_account else lead.lead_key).expression
    base_columns: list[ColumnElement[Any]] = [lead.lead_key.expression, unit_key.label("unit_key")]
    if needs_account:
        base_columns.append(LeadAccount.account_id.label("account_id"))
    base_query = select(*base_columns).where(lead.funnel == funnel.name)
    if needs_account:
        base_query = base_query.join_from(
            lead, LeadAccount, LeadAccount.lead_id == lead.lead_key, isouter=not by_account
        )
    base = base_query.subquery("lead_units")

    expressions: dict[Dimension, ColumnElement[Any]] = {}
    query = select(base.c.lead_key, base.c.unit_key).select_from(base)
    if wanted & FIRMOGRAPHIC:
        query = query.outerjoin(Account, Account.id == base.c.account_id)
        expressions[Dimension.INDUSTRY] = Account.industry.expression
        expressions[Dimension.COUNTRY] = Account.country.expression
        expressions[Dimension.TIER] = cast(Account.tier, String)
        expressions[Dimension.SIZE_BAND] = case(
            *[
                (Account.employee_count >= floor, literal(str(band)))
                for band, floor in SIZE_BAND_FLOORS
            ],
            else_=null(),
        )
    if wanted & FIRST_TOUCH:
        touch = StoredTouchpoint
        first_touch = (
            select(
                base.c.unit_key,
                touch.payload["channel"].astext.label("channel"),
                touch.payload[("utm", "name")].astext.label("campaign"),
                touch.payload[("utm", "source")].astext.label("source"),
            )
            .join_from(base, touch, touch.lead_key == base.c.lead_key)
            .ext(distinct_on(base.c.unit_key))
            .order_by(base.c.unit_key, touch.occurred_at, touch.source, touch.event_id)
            .subquery("first_touch")
        )
        query = query.outerjoin(first_touch, first_touch.c.unit_key == base.c.unit_key)
        expressions[Dimension.CHANNEL] = first_touch.c.channel
        expressions[Dimension.CAMPAIGN] = first_touch.c.campaign
        expressions[Dimension.SOURCE] = first_touch.c.source
    for dimension, values in segmentation.filters.items():
        query = query.where(expressions[dimension].in_(values))
    segment = (
        expressions[segmentation.breakdown]
        if segmentation.breakdown is not None
        else cast(null(), String)
    )
    return query.add_columns(segment.label("segment")).cte("members")


MAX_SEGMENTS = 100
T = TypeVar("T")


def ordered_segments(found: Mapping[str | None, T]) -> tuple[list[tuple[str | None, T]], int]:
    """Segment values in value order (unknown last), at most MAX_SEGMENTS, and how many
    were left out."""
    ordered = sorted(found.items(), key=lambda item: (item[0] is None, item[0] or ""))
    return ordered[:MAX_SEGMENTS], max(len(ordered) - MAX_SEGMENTS, 0)
