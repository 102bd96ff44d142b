"""Response models of the funnel analytics reports (cohorts, timing, transitions,
attribution). Every report echoes its population (unit, filters, breakdown); with a
breakdown, ``segments`` repeats the figures per value of the dimension."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from leadstage_api.schemas import Ratio


class Measure(BaseModel):
    """A statistic, or None with the reason (e.g. nothing measured): never NaN."""

    value: float | None
    reason: str | None = None


class ReportHeader(BaseModel):
    funnel: str
    funnel_version: int
    range_from: datetime = Field(serialization_alias="from", description="Start (inclusive).")
    range_to: datetime = Field(serialization_alias="to", description="End (exclusive).")
    unit: str = Field(description="lead, or account (an account counts as its furthest contact).")
    filters: dict[str, list[str]] = Field(description="The segment filters applied.")
    breakdown: str | None = Field(description="The breakdown dimension, if any.")
    segments_omitted: int = Field(
        default=0, description="Segment values left out beyond the first 100 (by value)."
    )


# -- cohorts ----------------------------------------------------------------------------


class CohortStage(BaseModel):
    stage: str
    reached: int = Field(
        description="Units of the cohort that reached the stage (or a later "
        "one) within follow_days of entering."
    )
    step_conversion: Ratio = Field(description="reached / reached at the previous stage.")
    cumulative_conversion: Ratio = Field(description="reached / entered.")


class Cohort(BaseModel):
    period_start: datetime
    entered: int = Field(description="Units that entered the funnel's first stage in the period.")
    followed_until: datetime = Field(description="The period's end plus follow_days.")
    complete: bool = Field(
        description="Whether followed_until has passed: every entrant "
        "of the period has been followed for the full window."
    )
    stages: list[CohortStage]


class TrendPoint(BaseModel):
    period_start: datetime
    value: float | None = Field(description="Cumulative conversion; null: nobody entered.")


class StageTrend(BaseModel):
    stage: str
    points: list[TrendPoint]
    change: Measure = Field(
        description="Cumulative conversion of the last complete cohort with entrants minus "
        "that of the first one (a difference of rates)."
    )


class CohortFigures(BaseModel):
    cohorts: list[Cohort]
    trends: list[StageTrend]


class CohortSegment(CohortFigures):
    value: str | None = Field(description="The segment's value; null: not known.")


COHORT_EXAMPLE: dict[str, Any] = {
    "funnel": "b2b-six-stage",
    "funnel_version": 1,
    "from": "2026-01-01T00:00:00Z",
    "to": "2026-03-01T00:00:00Z",
    "unit": "lead",
    "filters": {},
    "breakdown": None,
    "segments_omitted": 0,
    "period": "month",
    "follow_days": 30,
    "cohorts": [
        {
            "period_start": "2026-01-01T00:00:00Z",
            "entered": 4,
            "followed_until": "2026-03-03T00:00:00Z",
            "complete": True,
            "stages": [
                {
                    "stage": "Awareness",
                    "reached": 4,
                    "step_conversion": {"value": 1.0},
                    "cumulative_conversion": {"value": 1.0},
                },
                {
                    "stage": "Interest",
                    "reached": 3,
                    "step_conversion": {"value": 0.75},
                    "cumulative_conversion": {"value": 0.75},
                },
            ],
        }
    ],
    "trends": [
        {
            "stage": "Interest",
            "points": [{"period_start": "2026-01-01T00:00:00Z", "value": 0.75}],
            "change": {"value": None, "reason": "fewer than two complete cohorts with entrants"},
        }
    ],
    "segments": None,
}


class CohortReport(ReportHeader, CohortFigures):
    model_config = ConfigDict(json_schema_extra={"examples": [COHORT_EXAMPLE]})

    period: str
    follow_days: int
    segments: list[CohortSegment] | None = Field(description="Per breakdown value.")


# -- timing -----------------------------------------------------------------------------


class Bucket(BaseModel):
    label: str
    min_seconds: float = Field(description="Inclusive.")
    max_seconds: float | None = Field(description="Exclusive; null: no upper bound.")
    count: int


class DurationStats(BaseModel):
    count: int = Field(description="Durations measured.")
    median_seconds: Measure
    p75_seconds: Measure
    p90_seconds: Measure
    histogram: list[Bucket]


class StageTimeStats(DurationStats):
    stage: str
    open: int = Field(
        description="Stays still open (units in the stage now that entered it before `to`): "
        "not measured."
    )


class TimeInStageFigures(BaseModel):
    stages: list[StageTimeStats]


class TimeInStageSegment(TimeInStageFigures):
    value: str | None


class TimeInStageReport(ReportHeader, TimeInStageFigures):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel": "b2b-six-stage",
                    "funnel_version": 1,
                    "from": "2026-01-01T00:00:00Z",
                    "to": "2026-04-01T00:00:00Z",
                    "unit": "lead",
                    "filters": {"industry": ["software"]},
                    "breakdown": None,
                    "segments_omitted": 0,
                    "measures": "completed stays that ended in [from, to)",
                    "stages": [
                        {
                            "stage": "Engagement",
                            "count": 4,
                            "median_seconds": {"value": 1166400.0},
                            "p75_seconds": {"value": 1447200.0},
                            "p90_seconds": {"value": 1563840.0},
                            "histogram": [
                                {
                                    "label": "7d-14d",
                                    "min_seconds": 604800,
                                    "max_seconds": 1209600,
                                    "count": 2,
                                }
                            ],
                            "open": 0,
                        }
                    ],
                    "segments": None,
                }
            ]
        }
    )

    measures: str = Field(description="What is measured: completed stays only.")
    segments: list[TimeInStageSegment] | None


class PeriodDurations(BaseModel):
    period_start: datetime
    count: int
    median_seconds: Measure
    p75_seconds: Measure
    p90_seconds: Measure


class TimeToConvertFigures(DurationStats):
    trend: list[PeriodDurations] = Field(description="Per period of the conversion time.")


class TimeToConvertSegment(TimeToConvertFigures):
    value: str | None


class TimeToConvertReport(ReportHeader, TimeToConvertFigures):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel": "b2b-six-stage",
                    "funnel_version": 1,
                    "from": "2026-01-01T00:00:00Z",
                    "to": "2026-04-01T00:00:00Z",
                    "unit": "lead",
                    "filters": {},
                    "breakdown": None,
                    "segments_omitted": 0,
                    "from_stage": "Awareness",
                    "to_stage": "Customer",
                    "period": "month",
                    "count": 2,
                    "median_seconds": {"value": 2376000.0},
                    "p75_seconds": {"value": 2656800.0},
                    "p90_seconds": {"value": 2825280.0},
                    "histogram": [
                        {
                            "label": "14d-30d",
                            "min_seconds": 1209600,
                            "max_seconds": 2592000,
                            "count": 1,
                        }
                    ],
                    "trend": [
                        {
                            "period_start": "2026-02-01T00:00:00Z",
                            "count": 2,
                            "median_seconds": {"value": 2376000.0},
                            "p75_seconds": {"value": 2656800.0},
                            "p90_seconds": {"value": 2825280.0},
                        }
                    ],
                    "segments": None,
                }
            ]
        }
    )

    from_stage: str
    to_stage: str
    period: str
    segments: list[TimeToConvertSegment] | None


# -- transitions ------------------------------------------------------------------------


class StatePeriod(BaseModel):
    period_start: datetime
    entries: int = Field(description="Moves into the state.")
    departures: int = Field(description="Moves out of the state.")
    exits: int = Field(description="Departures into an exit state (lost, disqualified...).")
    regressions: int = Field(description="Departures back to an earlier stage.")
    loops: int = Field(description="Departures that looped back (e.g. Enjoy -> Buy).")
    arrivals_by_kind: dict[str, int] = Field(description="Entries by transition kind.")
    departures_by_kind: dict[str, int] = Field(description="Departures by transition kind.")


class StateTransitions(BaseModel):
    state: str
    kind: str = Field(description="stage or exit.")
    entries: int
    departures: int
    leads_left: int = Field(description="Distinct leads among the departures.")
    destinations: dict[str, int] = Field(
        description="Departures by the state moved to: who left, and to where."
    )
    periods: list[StatePeriod]


class TransitionsFigures(BaseModel):
    states: list[StateTransitions]


class TransitionsSegment(TransitionsFigures):
    value: str | None


class TransitionsReport(ReportHeader, TransitionsFigures):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel": "b2b-six-stage",
                    "funnel_version": 1,
                    "from": "2026-02-01T00:00:00Z",
                    "to": "2026-03-01T00:00:00Z",
                    "unit": "lead",
                    "filters": {},
                    "breakdown": None,
                    "segments_omitted": 0,
                    "period": "month",
                    "states": [
                        {
                            "state": "Engagement",
                            "kind": "stage",
                            "entries": 1,
                            "departures": 2,
                            "leads_left": 2,
                            "destinations": {"Disqualified": 1, "Lost": 1},
                            "periods": [
                                {
                                    "period_start": "2026-02-01T00:00:00Z",
                                    "entries": 1,
                                    "departures": 2,
                                    "exits": 2,
                                    "regressions": 0,
                                    "loops": 0,
                                    "arrivals_by_kind": {"advanced": 1},
                                    "departures_by_kind": {"exited": 2},
                                }
                            ],
                        }
                    ],
                    "segments": None,
                }
            ]
        }
    )

    period: str
    segments: list[TransitionsSegment] | None


# -- attribution ------------------------------------------------------------------------


class Credit(BaseModel):
    value: str | None = Field(description="The channel, campaign or touch type; null: none.")
    credit: float = Field(description="Conversions credited (fractions add up per unit to 1).")
    share: Ratio = Field(description="credit / conversions.")
    touches: int = Field(description="Touches of this value before the conversions.")
    revenue: float = Field(
        description="Credit times the unit's won-deal amount (deal_won and purchase "
        "`properties.amount`)."
    )


class AttributionFigures(BaseModel):
    conversions: int = Field(description="Units that reached the stage in [from, to).")
    unattributed: int = Field(description="Conversions with no touch before them.")
    revenue: float = Field(description="Won-deal amount of the converted units.")
    credits: list[Credit]


class AttributionSegment(AttributionFigures):
    value: str | None


class AttributionReport(ReportHeader, AttributionFigures):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "funnel": "b2b-six-stage",
                    "funnel_version": 1,
                    "from": "2026-01-01T00:00:00Z",
                    "to": "2026-04-01T00:00:00Z",
                    "unit": "lead",
                    "filters": {},
                    "breakdown": None,
                    "segments_omitted": 0,
                    "stage": "Customer",
                    "model": "position_based",
                    "half_life_days": 7,
                    "by": "channel",
                    "conversions": 2,
                    "unattributed": 0,
                    "revenue": 15000.0,
                    "credits": [
                        {
                            "value": "paid_search",
                            "credit": 0.4,
                            "share": {"value": 0.2},
                            "touches": 1,
                            "revenue": 4000.0,
                        }
                    ],
                    "segments": None,
                }
            ]
        }
    )

    stage: str
    model: str
    half_life_days: float
    by: str
    segments: list[AttributionSegment] | None
