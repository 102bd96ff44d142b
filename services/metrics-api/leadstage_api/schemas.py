"""Metrics API response models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TransitionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_stage: str | None
    to_stage: str
    kind: str = Field(description="entered, advanced, skipped, regressed, exited or reentered.")
    rule: str
    source: str = Field(description="The source (write key) that sent the event.")
    event_id: str
    event_type: str
    occurred_at: datetime


class Ratio(BaseModel):
    """A rate, or None with the reason (e.g. nothing to divide by): never NaN."""

    value: float | None
    reason: str | None = None


class StageSummary(BaseModel):
    stage: str
    group: str = Field(description="tofu, mofu or bofu.")
    current: int = Field(description="Leads in this stage now.")
    reached: int = Field(description="Leads whose furthest stage is this one or beyond.")
    step_conversion: Ratio = Field(description="reached / reached at the previous stage.")
    cumulative_conversion: Ratio = Field(description="reached / reached at the first stage.")
    drop_off: int = Field(description="Reached the previous stage, not this one.")
    in_progress: int = Field(description="Of the drop-off: still active within the window.")
    dropped: int = Field(description="Of the drop-off: exited, or no touch within the window.")


class SegmentSummary(BaseModel):
    """The summary figures of one value of the breakdown dimension."""

    value: str | None = Field(description="The segment's value; null: not known for these.")
    leads: int = Field(description="Units (leads or accounts) of this segment.")
    exits: dict[str, int]
    stages: list[StageSummary]


class FunnelSummary(BaseModel):
    funnel: str
    funnel_version: int
    entered_from: datetime | None
    entered_to: datetime | None
    as_of: datetime
    conversion_window_days: int
    leads: int = Field(
        description="Units (leads, or accounts with unit=account) that entered the funnel "
        "in the period."
    )
    exits: dict[str, int] = Field(description="Units now in each exit state.")
    stages: list[StageSummary]
    unit: str = Field(default="lead", description="lead or account.")
    filters: dict[str, list[str]] = Field(
        default_factory=dict, description="The segment filters applied."
    )
    breakdown: str | None = Field(default=None, description="The breakdown dimension.")
    segments: list[SegmentSummary] | None = Field(
        default=None, description="Per value of the breakdown dimension; null without one."
    )
    segments_omitted: int = Field(
        default=0, description="Segment values left out beyond the first 100 (by value)."
    )
    source: Literal["rollup", "raw"] = Field(
        default="raw",
        description="rollup: read from the incrementally maintained aggregates (unit lead, "
        "no filter, a period on UTC midnights); raw: recomputed from the stored transitions "
        "for this request.",
    )
    aggregated_through: datetime | None = Field(
        default=None,
        description="With source rollup: changes the stage engine committed before this "
        "time are counted (the rollup runs every second or so); null with source raw.",
    )


class StageTime(BaseModel):
    """How long a lead spent in a stage, as CRMs report it."""

    stage: str
    first_entered_at: datetime
    last_exited_at: datetime | None = Field(description="None while the lead is still there.")
    cumulative_seconds: float = Field(description="All visits, the current one up to now.")


class LeadSummary(BaseModel):
    lead_id: str
    funnel: str
    stage: str | None
    stage_entered_at: datetime | None
    sales_ready: bool
    last_touch_at: datetime


class LeadPage(BaseModel):
    """One page of leads, in lead id order; pass `next_cursor` back for the next page."""

    leads: list[LeadSummary]
    next_cursor: str | None = Field(description="None on the last page.")


class LeadView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "lead_id": "lead-42",
                    "funnel": "b2b-six-stage",
                    "stage": "Action",
                    "stage_entered_at": "2026-11-20T09:15:00+01:00",
                    "first_touch_at": "2026-11-18T14:02:00+01:00",
                    "last_touch_at": "2026-11-20T09:15:00+01:00",
                    "transitions": [
                        {
                            "from_stage": None,
                            "to_stage": "Awareness",
                            "kind": "entered",
                            "rule": "first-visit",
                            "source": "website",
                            "event_id": "e-1",
                            "event_type": "page_view",
                            "occurred_at": "2026-11-18T14:02:00+01:00",
                        },
                        {
                            "from_stage": "Awareness",
                            "to_stage": "Action",
                            "kind": "skipped",
                            "rule": "converted-on-cta",
                            "source": "website",
                            "event_id": "e-2",
                            "event_type": "demo_requested",
                            "occurred_at": "2026-11-20T09:15:00+01:00",
                        },
                    ],
                }
            ]
        }
    )

    lead_id: str
    funnel: str
    funnel_version: int | None = None
    stage: str | None = Field(description="None while the lead has touches but no stage yet.")
    stage_entered_at: datetime | None
    sales_ready: bool = False
    scores: dict[str, float] = Field(
        default_factory=dict, description="Score values as of `scores_as_of` (before decay)."
    )
    scores_as_of: datetime | None = None
    first_touch_at: datetime
    last_touch_at: datetime
    stage_times: list[StageTime] = Field(default_factory=list)
    transitions: list[TransitionView]
