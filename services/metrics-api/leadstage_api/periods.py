"""Report time ranges and periods: validation, caps, and UTC period buckets.

A range is ``[from, to)``. Without ``to`` it ends now; without ``from`` it starts
:data:`DEFAULT_RANGE_DAYS` before ``to``. Ranges longer than :data:`MAX_RANGE_DAYS`
and period series longer than :data:`MAX_PERIODS` are refused (422): a report is
one query over the range, and its size must stay bounded. Periods are calendar
buckets in UTC (weeks start on Monday, as PostgreSQL's ``date_trunc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from fastapi import status
from sqlalchemy import ColumnElement, DateTime, SQLColumnExpression, func, literal

from leadstage.http import ApiError, ErrorDetail

DEFAULT_RANGE_DAYS = 90
MAX_RANGE_DAYS = 731  # two years, a leap day included
MAX_PERIODS = 400


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime


def invalid(field: str, message: str, reason: str) -> ApiError:
    return ApiError(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "schema_violation",
        message,
        details=[ErrorDetail(field=field, reason=reason)],
    )


def check_aware(**values: datetime | None) -> None:
    for name, value in values.items():
        if value is not None and value.utcoffset() is None:
            raise invalid(name, "Naive time.", "give a time zone offset")


def check_span(start: datetime, end: datetime) -> None:
    if start >= end:
        raise invalid("to", "Empty date range.", "must be after from")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise invalid("to", "Date range too long.", f"at most {MAX_RANGE_DAYS} days after from")


def report_range(start: datetime | None, end: datetime | None, *, now: datetime) -> Range:
    """The checked ``[from, to)`` of a report, with the defaults filled in (UTC)."""
    check_aware(**{"from": start, "to": end})
    end = (end or now).astimezone(UTC)
    start = (start or end - timedelta(days=DEFAULT_RANGE_DAYS)).astimezone(UTC)
    check_span(start, end)
    return Range(start, end)


def truncate(moment: datetime, period: Period) -> datetime:
    """The start of the UTC period holding ``moment`` (as ``date_trunc`` in UTC)."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def following(start: datetime, period: Period) -> datetime:
    if period is Period.DAY:
        return start + timedelta(days=1)
    if period is Period.WEEK:
        return start + timedelta(days=7)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def period_starts(span: Range, period: Period) -> list[datetime]:
    """Every period that overlaps the range, in order; refused beyond MAX_PERIODS."""
    starts = [truncate(span.start, period)]
    while (following_start := following(starts[-1], period)) < span.end:
        starts.append(following_start)
        if len(starts) > MAX_PERIODS:
            raise invalid(
                "period",
                "Too many periods.",
                f"at most {MAX_PERIODS} periods: choose a longer period or a shorter range",
            )
    return starts


def period_start(moment: SQLColumnExpression[Any], period: Period) -> ColumnElement[datetime]:
    """SQL: the UTC period start of a timestamptz column (the period is a bind parameter).

    Select it in a subquery and group by that column: two bind parameters are two
    different expressions to PostgreSQL's GROUP BY check.
    """
    return func.timezone(
        "UTC",
        func.date_trunc(literal(period.value), func.timezone("UTC", moment)),
        type_=DateTime(timezone=True),
    )
