"""Calendar periods for sales inputs and metrics: months (``2026-07``) and quarters
(``2026-Q3``), in UTC.

Quotas and spend are stated per period label; metrics are reported per period.
A quarter's figure can be built from its three months, never the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

PeriodKind = Literal["month", "quarter"]
PERIOD_PATTERN = r"^\d{4}-(Q[1-4]|0[1-9]|1[0-2])$"
FIRST_YEAR, LAST_YEAR = 1970, 2999
_LABEL = re.compile(r"^(\d{4})-(?:Q([1-4])|(0[1-9]|1[0-2]))$")


@dataclass(frozen=True, order=True)
class Period:
    """A calendar month (index 1-12) or quarter (index 1-4) of a year, in UTC."""

    year: int
    kind: PeriodKind
    index: int

    @property
    def label(self) -> str:
        if self.kind == "quarter":
            return f"{self.year}-Q{self.index}"
        return f"{self.year}-{self.index:02d}"

    @property
    def first_month(self) -> int:
        return 3 * self.index - 2 if self.kind == "quarter" else self.index

    @property
    def start_date(self) -> date:
        return date(self.year, self.first_month, 1)

    @property
    def end_date(self) -> date:
        """The first day after the period."""
        month = self.first_month + (3 if self.kind == "quarter" else 1)
        return date(self.year + 1, 1, 1) if month > 12 else date(self.year, month, 1)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.start_date, datetime.min.time(), tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.end_date, datetime.min.time(), tzinfo=UTC)

    def previous(self) -> Period:
        count = 4 if self.kind == "quarter" else 12
        if self.index == 1:
            return Period(self.year - 1, self.kind, count)
        return Period(self.year, self.kind, self.index - 1)

    def months(self) -> tuple[Period, ...]:
        """A quarter's three months (a month is its own only month)."""
        if self.kind == "month":
            return (self,)
        return tuple(Period(self.year, "month", self.first_month + i) for i in range(3))

    def quarter(self) -> Period:
        if self.kind == "quarter":
            return self
        return Period(self.year, "quarter", (self.index - 1) // 3 + 1)

    def __str__(self) -> str:
        return self.label


def parse_period(label: str) -> Period:
    """``2026-Q3`` or ``2026-07``; ValueError with the reason otherwise."""
    match = _LABEL.match(label)
    if match is None:
        raise ValueError("a period is YYYY-Qn (quarter) or YYYY-MM (month), e.g. 2026-Q3, 2026-07")
    year = int(match.group(1))
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"the year must be between {FIRST_YEAR} and {LAST_YEAR}")
    if match.group(2) is not None:
        return Period(year, "quarter", int(match.group(2)))
    return Period(year, "month", int(match.group(3)))


def period_containing(day: date, kind: PeriodKind) -> Period:
    if kind == "quarter":
        return Period(day.year, "quarter", (day.month - 1) // 3 + 1)
    return Period(day.year, "month", day.month)


def periods_between(kind: PeriodKind, start: date, end: date) -> list[Period]:
    """Every whole period that overlaps [start, end), in order."""
    periods: list[Period] = []
    current = period_containing(start, kind)
    while current.start_date < end:
        periods.append(current)
        following = current.end_date
        current = period_containing(following, kind)
    return periods


def count_periods(kind: PeriodKind, start: date, end: date) -> int:
    """How many periods ``periods_between`` returns, without building them."""
    first, last = period_containing(start, kind), period_containing(end - timedelta(days=1), kind)
    per_year = 4 if kind == "quarter" else 12
    return max((last.year - first.year) * per_year + last.index - first.index + 1, 0)
