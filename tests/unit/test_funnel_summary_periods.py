"""How a summary period on UTC midnights is read from the rollup: whole months from the
month counts, the days of the partial months at either end from the day counts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from leadstage_api.funnel_metrics import _period_bounds


def bounds(entered_from: datetime | None, entered_to: datetime | None) -> tuple[date, ...]:
    found = _period_bounds(entered_from, entered_to)
    return (found["day_from"], found["month_from"], found["month_to"], found["day_to"])


def test_partial_whole_and_partial_months() -> None:
    assert bounds(datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 4, 10, tzinfo=UTC)) == (
        date(2026, 1, 15),
        date(2026, 2, 1),
        date(2026, 4, 1),
        date(2026, 4, 10),
    )


def test_whole_months_read_no_day() -> None:
    found = bounds(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    day_from, month_from, month_to, day_to = found
    assert (day_from, month_from) == (date(2026, 1, 1), date(2026, 1, 1))
    assert (month_to, day_to) == (date(2026, 11, 1), date(2026, 11, 1))


def test_within_one_month_every_day_is_read_by_day() -> None:
    # No whole month: the month range is empty, and so is the second day range.
    assert bounds(datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 20, tzinfo=UTC)) == (
        date(2026, 3, 5),
        date(2026, 3, 20),
        date(2026, 3, 20),
        date(2026, 3, 20),
    )
    assert bounds(datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)) == (
        date(2026, 3, 5),
        date(2026, 4, 1),
        date(2026, 4, 1),
        date(2026, 4, 1),
    )


def test_december_rolls_into_the_next_year() -> None:
    assert bounds(datetime(2025, 12, 2, tzinfo=UTC), datetime(2026, 2, 3, tzinfo=UTC)) == (
        date(2025, 12, 2),
        date(2026, 1, 1),
        date(2026, 2, 1),
        date(2026, 2, 3),
    )


def test_open_ends_take_every_month_and_entry() -> None:
    assert bounds(None, None) == (date.min, date.min, date.max, date.max)
    found = _period_bounds(None, datetime(2026, 5, 1, tzinfo=UTC))
    assert (found["month_from"], found["month_to"]) == (date.min, date(2026, 5, 1))
    assert found["entered_from"] == datetime.min.replace(tzinfo=UTC)
    assert _period_bounds(datetime(2026, 5, 2, tzinfo=UTC), None)["month_from"] == date(2026, 6, 1)


def test_an_offset_midnight_is_read_in_utc() -> None:
    # 2026-03-01T01:00+01:00 is UTC midnight of March 1.
    plus_one = timezone(timedelta(hours=1))
    entered_from = datetime(2026, 3, 1, 1, tzinfo=plus_one)
    assert bounds(entered_from, datetime(2026, 5, 1, tzinfo=UTC))[:2] == (
        date(2026, 3, 1),
        date(2026, 3, 1),
    )
