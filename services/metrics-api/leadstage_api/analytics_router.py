"""Funnel analytics routes: thin handlers over cohorts, timing, transitions_report and
attribution. Every report takes the segment parameters of :mod:`leadstage_api.segments`
and needs the ``metrics:read`` scope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status

from leadstage.credentials import SCOPE_READ_METRICS, Caller
from leadstage.funnels import Funnel
from leadstage.http import ERROR_RESPONSES, ApiError, ErrorDetail, ErrorEnvelope
from leadstage_api import attribution, cohorts, timing, transitions_report
from leadstage_api.analytics_schemas import (
    AttributionReport,
    CohortReport,
    TimeInStageReport,
    TimeToConvertReport,
    TransitionsReport,
)
from leadstage_api.attribution import By, Model
from leadstage_api.dependencies import Session, require_scope
from leadstage_api.periods import Period, report_range
from leadstage_api.router import check_funnel
from leadstage_api.segments import Segmentation, Unit, segmentation_params

router = APIRouter(prefix="/v1/funnels", tags=["funnel analytics"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorEnvelope, "description": "The token lacks the metrics:read scope."},
    404: {"model": ErrorEnvelope, "description": "Unknown funnel or stage (named)."},
}
SEGMENT_NOTE = (
    " Filters: `industry`, `size_band`, `country`, `tier` (the account's firmographics) and "
    "`channel`, `campaign` (utm_campaign), `source` (utm_source) of the unit's first touch; "
    "repeat a parameter for several values. `breakdown=<dimension>` adds the figures per "
    "value of one dimension. `unit=account` counts accounts: an account reaches a stage "
    "when its first contact does. `from`/`to` default to the 90 days before now; at most "
    "731 days."
)

Metrics = Annotated[Caller, Depends(require_scope(SCOPE_READ_METRICS))]
FunnelName = Annotated[str, Path(max_length=100, description="An active funnel's name.")]
From = Annotated[datetime | None, Query(alias="from", description="Start, inclusive.")]
To = Annotated[datetime | None, Query(alias="to", description="End, exclusive.")]
Segments = Annotated[Segmentation, Depends(segmentation_params)]


def active_funnel(request: Request, name: str) -> Funnel:
    check_funnel(request, name)
    funnel: Funnel = request.app.state.funnels[name]
    return funnel


def funnel_stage(funnel: Funnel, stage: str, field: str, *, exits: bool = False) -> str:
    if stage in funnel.stages or (exits and stage in funnel.exits):
        return stage
    raise ApiError(
        status.HTTP_404_NOT_FOUND,
        "not_found",
        f"Unknown stage {stage!r} in {funnel.name}.",
        details=[
            ErrorDetail(
                field=field,
                reason=f"stages: {', '.join(funnel.stages)}"
                + (f"; exits: {', '.join(sorted(funnel.exits))}" if exits else ""),
            )
        ],
    )


def leads_only(segmentation: Segmentation, report: str) -> None:
    if segmentation.unit is not Unit.LEAD:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            f"The {report} report counts leads only.",
            details=[
                ErrorDetail(
                    field="unit",
                    reason="an account has no stays or moves of its own until account "
                    "state history exists; use unit=lead",
                )
            ],
        )


@router.get(
    "/{funnel}/cohorts",
    summary="Cohorts by entry period, followed for N days: reached and conversion per stage",
    description="Units that entered the funnel in each period of [`from`, `to`) (UTC "
    "periods), followed for `follow_days` after their own entry: per cohort and stage, how "
    "many reached it (skips count as passed) and the step and cumulative conversion; per "
    "stage, the trend of cumulative conversion over the cohorts. A cohort is `complete` "
    "once every entrant has been followed for the whole window." + SEGMENT_NOTE,
    responses=RESPONSES,
)
async def get_cohorts(
    request: Request,
    session: Session,
    _: Metrics,
    funnel: FunnelName,
    segmentation: Segments,
    range_from: From = None,
    range_to: To = None,
    period: Period = Period.MONTH,
    follow_days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> CohortReport:
    definition = active_funnel(request, funnel)
    now = datetime.now(UTC)
    return await cohorts.cohorts(
        session,
        definition,
        span=report_range(range_from, range_to, now=now),
        period=period,
        follow_days=follow_days,
        segmentation=segmentation,
        now=now,
    )


@router.get(
    "/{funnel}/time-in-stage",
    summary="Per stage: median, p75, p90 and a histogram of completed stays",
    description="Completed stays only: a stay runs from a lead's move into a stage to its "
    "next move (an exit included) and counts in the range its end falls in; a stay still "
    "open is counted as `open`, not measured. A revisit (regression, loop) is a stay of its "
    "own. Percentiles are PostgreSQL's interpolated `percentile_cont`, in seconds. Leads "
    "only (`unit=account` is refused)." + SEGMENT_NOTE,
    responses=RESPONSES,
)
async def get_time_in_stage(
    request: Request,
    session: Session,
    _: Metrics,
    funnel: FunnelName,
    segmentation: Segments,
    range_from: From = None,
    range_to: To = None,
) -> TimeInStageReport:
    definition = active_funnel(request, funnel)
    span = report_range(range_from, range_to, now=datetime.now(UTC))
    leads_only(segmentation, "time-in-stage")
    return await timing.time_in_stage(session, definition, span=span, segmentation=segmentation)


@router.get(
    "/{funnel}/time-to-convert",
    summary="Time from one stage to a later one: median, p75, p90, histogram, trend",
    description="For each unit that first reached `to_stage` in [`from`, `to`): the time "
    "since it first reached `from_stage`, both counting skips (a unit that jumped over "
    "`from_stage` took 0 from it). The trend groups conversions by their period. Defaults: "
    "the funnel's first and last stage." + SEGMENT_NOTE,
    responses=RESPONSES,
)
async def get_time_to_convert(
    request: Request,
    session: Session,
    _: Metrics,
    funnel: FunnelName,
    segmentation: Segments,
    range_from: From = None,
    range_to: To = None,
    from_stage: Annotated[str | None, Query(max_length=100)] = None,
    to_stage: Annotated[str | None, Query(max_length=100)] = None,
    period: Period = Period.MONTH,
) -> TimeToConvertReport:
    definition = active_funnel(request, funnel)
    start = funnel_stage(definition, from_stage or definition.stages[0], "from_stage")
    end = funnel_stage(definition, to_stage or definition.stages[-1], "to_stage")
    if definition.stages.index(start) >= definition.stages.index(end):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "from_stage must come before to_stage.",
            details=[ErrorDetail(field="to_stage", reason=f"must be a stage after {start}")],
        )
    return await timing.time_to_convert(
        session,
        definition,
        from_stage=start,
        to_stage=end,
        span=report_range(range_from, range_to, now=datetime.now(UTC)),
        period=period,
        segmentation=segmentation,
    )


@router.get(
    "/{funnel}/transitions",
    summary="Entries, departures, exits, regressions and loops per state and period",
    description="Every stage change in [`from`, `to`) is an entry into its target and a "
    "departure from its origin, in its period (UTC). Per state (stages and exits): entries "
    "and departures by kind, and `destinations`: who left the state, and to where. "
    "`stage` narrows the report to one state. Counts are moves (a lead can move twice); "
    "`leads_left` counts leads. Leads only (`unit=account` is refused)." + SEGMENT_NOTE,
    responses=RESPONSES,
)
async def get_transitions(
    request: Request,
    session: Session,
    _: Metrics,
    funnel: FunnelName,
    segmentation: Segments,
    range_from: From = None,
    range_to: To = None,
    period: Period = Period.MONTH,
    stage: Annotated[str | None, Query(max_length=100, description="A stage or exit.")] = None,
) -> TransitionsReport:
    definition = active_funnel(request, funnel)
    state = funnel_stage(definition, stage, "stage", exits=True) if stage else None
    span = report_range(range_from, range_to, now=datetime.now(UTC))
    leads_only(segmentation, "transitions")
    return await transitions_report.transitions(
        session, definition, span=span, period=period, state=state, segmentation=segmentation
    )


@router.get(
    "/{funnel}/attribution",
    summary="Credit for conversions to the touchpoints before them, per channel, campaign or type",
    description="Conversions: units first reaching `stage` (counting skips) in [`from`, "
    "`to`). Each one's credit (adding up to 1) is shared among the unit's touches at or "
    "before it (an account's: all its contacts'), by `model`: `first_touch`, `last_touch`, "
    "`linear` (1/n), `position_based` (40% first, 40% last, 20% over the middle; one touch "
    "100%, two 50/50) or `time_decay` (weight 2^(-age/`half_life_days`), normalised). "
    "`revenue` weights each conversion by the unit's won-deal amount (`properties.amount` "
    "of deal_won and purchase touches)." + SEGMENT_NOTE,
    responses=RESPONSES,
)
async def get_attribution(
    request: Request,
    session: Session,
    _: Metrics,
    funnel: FunnelName,
    segmentation: Segments,
    stage: Annotated[str, Query(max_length=100, description="The conversion stage.")],
    range_from: From = None,
    range_to: To = None,
    model: Model = Model.POSITION_BASED,
    half_life_days: Annotated[float, Query(gt=0, le=365)] = 7.0,
    by: By = By.CHANNEL,
) -> AttributionReport:
    definition = active_funnel(request, funnel)
    return await attribution.attribution(
        session,
        definition,
        stage=funnel_stage(definition, stage, "stage"),
        model=model,
        half_life_days=half_life_days,
        by=by,
        span=report_range(range_from, range_to, now=datetime.now(UTC)),
        segmentation=segmentation,
    )
