"""The sales inputs events do not carry: quotas, marketing spend and deal forecasts.

Every write appends a version (never an update), stamped with the API token that
wrote it. A write equal to the current version adds nothing, so a retried PUT is
harmless. Concurrent writes to one key are serialised by a transaction-scoped
advisory lock, so version numbers never collide. Module-level functions that take
the session; the request's unit of work commits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.credentials import Caller
from leadstage.db.models import (
    FORECAST_EVENTS_PREDICATE,
    DealForecast,
    MarketingSpend,
    SalesQuota,
    StoredTouchpoint,
)
from leadstage_api.sales_schemas import ForecastIn, QuotaIn, SpendIn

logger = logging.getLogger(__name__)

# The largest amount an input may carry (as the API's own limit): beyond it an
# event's figure is taken for garbage rather than summed into a metric.
MAX_AMOUNT = Decimal("999999999999999")


def _lock_id(key: str) -> ColumnElement[int]:
    return func.hashtextextended("sales-input:" + key, 0)


async def _lock(session: AsyncSession, key: str) -> None:
    """Serialise writers of one input key until the transaction ends."""
    await session.execute(select(func.pg_advisory_xact_lock(_lock_id(key))))


async def _try_lock(session: AsyncSession, key: str) -> bool:
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(_lock_id(key)))))


# --- quotas -----------------------------------------------------------------------


_Versioned = TypeVar("_Versioned", SalesQuota, MarketingSpend)


async def _versions(
    session: AsyncSession, model: type[_Versioned], key: Mapping[str, str], *, latest: bool
) -> list[_Versioned]:
    """A key's versions, oldest first (or only the latest one)."""
    query = select(model).where(*(getattr(model, column) == value for column, value in key.items()))
    if latest:
        query = query.order_by(model.version.desc()).limit(1)
    else:
        query = query.order_by(model.version)
    return list((await session.scalars(query)).all())


async def _append_version(
    session: AsyncSession,
    caller: Caller,
    model: type[_Versioned],
    lock: str,
    key: Mapping[str, str],
    values: Mapping[str, Any],
) -> tuple[_Versioned, bool]:
    """The current version after the write, and whether the write added it: a write
    equal to the current version adds nothing (a retried PUT is harmless)."""
    await _lock(session, lock)
    latest = await _versions(session, model, key, latest=True)
    current = latest[0] if latest else None
    if current is not None and all(getattr(current, k) == v for k, v in values.items()):
        return current, False
    added = model(
        **key,
        **values,
        version=(current.version + 1) if current else 1,
        written_by_token_id=caller.token_id,
        written_by=caller.name,
    )
    session.add(added)
    await session.flush()
    await session.refresh(added)
    return added, True


# --- quotas -----------------------------------------------------------------------


async def quota_versions(
    session: AsyncSession, owner_kind: str, owner_id: str, period: str
) -> list[SalesQuota]:
    key = {"owner_kind": owner_kind, "owner_id": owner_id, "period": period}
    return await _versions(session, SalesQuota, key, latest=False)


async def put_quota(
    session: AsyncSession,
    caller: Caller,
    owner_kind: str,
    owner_id: str,
    period: str,
    quota: QuotaIn,
) -> tuple[SalesQuota, bool]:
    """The current version after the write, and whether the write added it."""
    return await _append_version(
        session,
        caller,
        SalesQuota,
        f"quota:{owner_kind}:{owner_id}:{period}",
        {"owner_kind": owner_kind, "owner_id": owner_id, "period": period},
        {"amount": quota.amount, "currency": quota.currency},
    )


# --- marketing spend --------------------------------------------------------------


async def spend_versions(session: AsyncSession, period: str, channel: str) -> list[MarketingSpend]:
    key = {"period": period, "channel": channel}
    return await _versions(session, MarketingSpend, key, latest=False)


async def put_spend(
    session: AsyncSession, caller: Caller, period: str, channel: str, spend: SpendIn
) -> tuple[MarketingSpend, bool]:
    return await _append_version(
        session,
        caller,
        MarketingSpend,
        f"spend:{period}:{channel}",
        {"period": period, "channel": channel},
        {"amount": spend.amount, "currency": spend.currency},
    )


# --- deal forecasts ---------------------------------------------------------------
# All forecast writes (API and events) take one lock: forecasts are written rarely,
# and one lock keeps an event sync from holding thousands of per-deal locks.
_FORECASTS_LOCK = "forecasts"


def standing(versions: Sequence[DealForecast]) -> DealForecast | None:
    """The version that stands: the latest ``as_of`` (a late event about an older
    forecast is recorded, but does not override a newer statement)."""
    return max(versions, key=lambda v: (v.as_of, v.version), default=None)


async def forecast_versions(session: AsyncSession, deal_id: str) -> list[DealForecast]:
    rows = await session.scalars(
        select(DealForecast).where(DealForecast.deal_id == deal_id).order_by(DealForecast.version)
    )
    return list(rows.all())


async def _next_versions(session: AsyncSession, deal_ids: set[str]) -> dict[str, int]:
    rows = await session.execute(
        select(DealForecast.deal_id, func.max(DealForecast.version))
        .where(
            DealForecast.deal_id
            == any_(bindparam("deal_ids", sorted(deal_ids), type_=ARRAY(String)))
        )
        .group_by(DealForecast.deal_id)
    )
    latest: dict[str, int] = {deal: version for deal, version in rows}
    return {deal: latest.get(deal, 0) + 1 for deal in deal_ids}


async def put_forecast(
    session: AsyncSession, caller: Caller, deal_id: str, forecast: ForecastIn, now: datetime
) -> tuple[DealForecast, bool]:
    # The deal's events first, so the API's version is numbered after them.
    await record_event_forecasts(session, deal_id=deal_id, wait=True)
    versions = await forecast_versions(session, deal_id)
    current = standing(versions)
    stated = (
        forecast.expected_close_date,
        forecast.amount,
        forecast.currency,
        forecast.rep,
        forecast.team,
    )
    if (
        current is not None
        and (
            current.expected_close_date,
            current.amount,
            current.currency,
            current.rep,
            current.team,
        )
        == stated
        and (forecast.as_of is None or forecast.as_of == current.as_of)
    ):
        return current, False
    added = DealForecast(
        deal_id=deal_id,
        version=(versions[-1].version + 1) if versions else 1,
        expected_close_date=forecast.expected_close_date,
        amount=forecast.amount,
        currency=forecast.currency,
        rep=forecast.rep,
        team=forecast.team,
        source="api",
        as_of=forecast.as_of or now,
        written_by_token_id=caller.token_id,
        written_by=caller.name,
    )
    session.add(added)
    await session.flush()
    await session.refresh(added)
    return added, True


@dataclass(frozen=True)
class EventForecast:
    deal_id: str
    expected_close_date: date
    amount: Decimal
    currency: str | None
    rep: str | None
    team: str | None


def _text(value: Any, *, limit: int = 255) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if 0 < len(text) <= limit else None


def parse_amount(value: Any) -> Decimal | None:
    """A JSON number usable as money (finite, 0 <= x <= MAX_AMOUNT), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or not Decimal(0) <= amount <= MAX_AMOUNT:
        return None
    return amount.quantize(Decimal("0.0001"))


def parse_event_forecast(properties: Any) -> EventForecast | None:
    """A forecast from a deal event's properties: ``deal_id``, ``expected_close_date``
    (ISO date), ``amount``, and optionally ``currency``, ``rep``, ``team``. None if any
    required one is missing or malformed (the event is then not a forecast)."""
    if not isinstance(properties, dict):
        return None
    deal_id = _text(properties.get("deal_id"))
    amount = parse_amount(properties.get("amount"))
    raw_date = properties.get("expected_close_date")
    if deal_id is None or amount is None or not isinstance(raw_date, str):
        return None
    try:
        close = date.fromisoformat(raw_date.strip()[:10])
    except ValueError:
        return None
    currency = properties.get("currency")
    if currency is not None and not (
        isinstance(currency, str)
        and len(currency) == 3
        and currency.isascii()
        and currency.isupper()
    ):
        return None
    return EventForecast(
        deal_id=deal_id,
        expected_close_date=close,
        amount=amount,
        currency=currency,
        rep=_text(properties.get("rep")),
        team=_text(properties.get("team")),
    )


async def record_event_forecasts(
    session: AsyncSession, *, deal_id: str | None = None, wait: bool = False
) -> int:
    """Record a forecast version for each deal event carrying one that is not yet
    recorded (the engine stores the events; this reads them, so the engine is untouched).
    Malformed forecasts are left out. Returns how many versions were added.

    Readers do not wait for the lock: whoever holds it is recording these very events,
    and its rows would not be visible to this transaction before it commits anyway, so
    going on without them is the same as having asked a moment earlier.
    """
    if wait:
        await _lock(session, _FORECASTS_LOCK)
    elif not await _try_lock(session, _FORECASTS_LOCK):
        return 0
    t = StoredTouchpoint
    recorded = select(DealForecast.id).where(
        DealForecast.event_source == t.source, DealForecast.event_id == t.event_id
    )
    query = select(t.source, t.event_id, t.occurred_at, t.payload["properties"]).where(
        FORECAST_EVENTS_PREDICATE, ~recorded.exists()
    )
    if deal_id is not None:
        query = query.where(t.payload["properties"]["deal_id"].astext == deal_id)
    rows = (await session.execute(query.order_by(t.occurred_at, t.source, t.event_id))).all()
    found = [
        (source, event_id, occurred_at, forecast)
        for source, event_id, occurred_at, properties in rows
        if (forecast := parse_event_forecast(properties)) is not None
    ]
    if len(found) < len(rows):
        logger.debug("%d deal events carry a malformed forecast", len(rows) - len(found))
    if not found:
        return 0
    versions = await _next_versions(session, {forecast.deal_id for *_, forecast in found})
    written_at = datetime.now(UTC)
    for source, event_id, occurred_at, forecast in found:
        session.add(
            DealForecast(
                deal_id=forecast.deal_id,
                version=versions[forecast.deal_id],
                expected_close_date=forecast.expected_close_date,
                amount=forecast.amount,
                currency=forecast.currency,
                rep=forecast.rep,
                team=forecast.team,
                source="event",
                as_of=occurred_at,
                written_at=written_at,
                written_by=source,
                event_source=source,
                event_id=event_id,
            )
        )
        versions[forecast.deal_id] += 1
    await session.flush()
    return len(found)
