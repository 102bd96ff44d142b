"""Company size bands: shared by the metrics API's segments and the summary rollup,
so both put an account in the same band."""

from __future__ import annotations

from enum import StrEnum


class SizeBand(StrEnum):
    """Company size by employee count; the bounds follow the fit score's (50, 200, 5000)."""

    UP_TO_49 = "1-49"
    FROM_50 = "50-199"
    FROM_200 = "200-999"
    FROM_1000 = "1000-4999"
    FROM_5000 = "5000+"


# (band, lowest employee count in it); a count of 0 falls in the first band.
SIZE_BAND_FLOORS = (
    (SizeBand.FROM_5000, 5000),
    (SizeBand.FROM_1000, 1000),
    (SizeBand.FROM_200, 200),
    (SizeBand.FROM_50, 50),
    (SizeBand.UP_TO_49, 0),
)


def size_band(employee_count: int | None) -> SizeBand | None:
    """The band of an employee count (the Python twin of the SQL CASE, for tests)."""
    if employee_count is None:
        return None
    return next(band for band, floor in SIZE_BAND_FLOORS if employee_count >= floor)
