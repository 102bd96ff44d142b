"""Sales routes: the versioned inputs (quotas, marketing spend, deal forecasts) and the
sales metrics. Thin handlers over sales_inputs.py and sales_metrics.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel

from leadstage.credentials import SCOPE_READ_METRICS, SCOPE_WRITE_INPUTS, Caller
from leadstage.events import Channel
from leadstage.funnels import DEFAULT_FUNNEL
from leadstage.http import ERROR_RESPONSES, ApiError, ErrorDetail, ErrorEnvelope
from leadstage_api import sales_inputs, sales_metrics
from leadstage_api.dependencies import Session, require_scope
from leadstage_api.router import check_funnel
from leadstage_api.sales_periods import (
    FIRST_YEAR,
    LAST_YEAR,
    PERIOD_PATTERN,
    Period,
    count_periods,
    parse_period,
)
from leadstage_api.sales_schemas import (
    ForecastHistory,
    ForecastIn,
    ForecastVersion,
    OwnerKind,
    QuotaHistory,
    QuotaIn,
    QuotaVersion,
    SalesMetrics,
    SpendHistory,
    SpendIn,
    SpendVersion,
)

router = APIRouter(prefix="/v1", tags=["sales"])

# A forecast's as_of may be this far ahead of our clock (the caller's may run fast).
CLOCK_SKEW = timedelta(minutes=5)


def write_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        **ERROR_RESPONSES,
        200: {"description": "Equal to the current version: nothing was added (idempotent)."},
        201: {"model": model, "description": "A new version was added: the version written."},
        403: {"model": ErrorEnvelope, "description": "The token lacks the inputs:write scope."},
    }


_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorEnvelope, "description": "The token lacks the metrics:read scope."},
    404: {"model": ErrorEnvelope, "description": "Nothing recorded for this key."},
}

Writer = Annotated[Caller, Depends(require_scope(SCOPE_WRITE_INPUTS))]
Reader = Annotated[Caller, Depends(require_scope(SCOPE_READ_METRICS))]
PeriodLabel = Annotated[
    str,
    Path(
        pattern=PERIOD_PATTERN,
        description="A quarter (`2026-Q3`) or a month (`2026-07`), in UTC.",
        examples=["2026-Q3"],
    ),
]
OwnerId = Annotated[str, Path(min_length=1, max_length=255, description="The rep or team id.")]
DealId = Annotated[str, Path(min_length=1, max_length=255, description="The deal's id.")]


def period_of(label: str) -> Period:
    try:
        return parse_period(label)
    except ValueError as error:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "Bad period.",
            details=[ErrorDetail(field="period", reason=str(error))],
        ) from error


def not_found(what: str) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No {what} recorded.")


def written(response: Response, added: bool) -> None:
    response.status_code = status.HTTP_201_CREATED if added else status.HTTP_200_OK


# --- quotas ----------------------------------------------------------------------------


@router.put(
    "/quotas/{owner_kind}/{owner_id}/{period}",
    summary="State a rep's or team's sales quota for a period (adds a version)",
    description="Never overwrites: a changed quota is a new version, stamped with the "
    "token that wrote it; the same body again adds nothing (200).",
    responses=write_responses(QuotaVersion),
)
async def put_quota(
    session: Session,
    caller: Writer,
    response: Response,
    owner_kind: OwnerKind,
    owner_id: OwnerId,
    period: PeriodLabel,
    quota: QuotaIn,
) -> QuotaVersion:
    period_of(period)
    row, added = await sales_inputs.put_quota(session, caller, owner_kind, owner_id, period, quota)
    written(response, added)
    return QuotaVersion.model_validate(row)


@router.get(
    "/quotas/{owner_kind}/{owner_id}/{period}",
    summary="The current quota of a rep or team for a period",
    responses=_READ_RESPONSES,
)
async def get_quota(
    session: Session, _: Reader, owner_kind: OwnerKind, owner_id: OwnerId, period: PeriodLabel
) -> QuotaVersion:
    period_of(period)
    versions = await sales_inputs.quota_versions(session, owner_kind, owner_id, period)
    if not versions:
        raise not_found(f"quota for {owner_kind} {owner_id!r} in {period}")
    return QuotaVersion.model_validate(versions[-1])


@router.get(
    "/quotas/{owner_kind}/{owner_id}/{period}/history",
    summary="Every version of a quota, oldest first",
    responses=_READ_RESPONSES,
)
async def get_quota_history(
    session: Session, _: Reader, owner_kind: OwnerKind, owner_id: OwnerId, period: PeriodLabel
) -> QuotaHistory:
    period_of(period)
    versions = await sales_inputs.quota_versions(session, owner_kind, owner_id, period)
    if not versions:
        raise not_found(f"quota for {owner_kind} {owner_id!r} in {period}")
    return QuotaHistory(
        owner_kind=owner_kind,
        owner_id=owner_id,
        period=period,
        versions=[QuotaVersion.model_validate(v) for v in versions],
    )


# --- marketing spend -------------------------------------------------------------------


@router.put(
    "/spend/{period}/{channel}",
    summary="State the marketing spend on a channel in a period (adds a version)",
    description="Never overwrites: a changed figure is a new version, stamped with the "
    "token that wrote it; the same body again adds nothing (200).",
    responses=write_responses(SpendVersion),
)
async def put_spend(
    session: Session,
    caller: Writer,
    response: Response,
    period: PeriodLabel,
    channel: Channel,
    spend: SpendIn,
) -> SpendVersion:
    period_of(period)
    row, added = await sales_inputs.put_spend(session, caller, period, channel.value, spend)
    written(response, added)
    return SpendVersion.model_validate(row)


@router.get(
    "/spend/{period}/{channel}",
    summary="The current marketing spend on a channel in a period",
    responses=_READ_RESPONSES,
)
async def get_spend(
    session: Session, _: Reader, period: PeriodLabel, channel: Channel
) -> SpendVersion:
    period_of(period)
    versions = await sales_inputs.spend_versions(session, period, channel.value)
    if not versions:
        raise not_found(f"spend on {channel.value} in {period}")
    return SpendVersion.model_validate(versions[-1])


@router.get(
    "/spend/{period}/{channel}/history",
    summary="Every version of a spend figure, oldest first",
    responses=_READ_RESPONSES,
)
async def get_spend_history(
    session: Session, _: Reader, period: PeriodLabel, channel: Channel
) -> SpendHistory:
    period_of(period)
    versions = await sales_inputs.spend_versions(session, period, channel.value)
    if not versions:
        raise not_found(f"spend on {channel.value} in {period}")
    return SpendHistory(
        period=period,
        channel=channel.value,
        versions=[SpendVersion.model_validate(v) for v in versions],
    )


# --- deal forecasts --------------------------------------------------------------------


@router.put(
    "/forecasts/{deal_id}",
    summary="State a deal's forecast: expected close date and amount (adds a version)",
    description="Never overwrites: each change is a new version. Deal events that carry "
    "`properties.deal_id`, `expected_close_date` and `amount` add versions too "
    "(source=event). The forecast that stands is the one with the latest `as_of`.",
    responses=write_responses(ForecastVersion),
)
async def put_forecast(
    session: Session,
    caller: Writer,
    response: Response,
    deal_id: DealId,
    forecast: ForecastIn,
) -> ForecastVersion:
    now = datetime.now(UTC)
    if forecast.as_of is not None and forecast.as_of > now + CLOCK_SKEW:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "A forecast cannot be made in the future.",
            details=[ErrorDetail(field="as_of", reason="must not be in the future")],
        )
    row, added = await sales_inputs.put_forecast(session, caller, deal_id, forecast, now)
    written(response, added)
    return ForecastVersion.model_validate(row)


@router.get(
    "/forecasts/{deal_id}",
    summary="A deal's forecast as it stands (the latest as_of)",
    description="Forecasts carried by deal events are recorded first, so the answer "
    "includes every event the engine has stored.",
    responses=_READ_RESPONSES,
)
async def get_forecast(session: Session, _: Reader, deal_id: DealId) -> ForecastVersion:
    await sales_inputs.record_event_forecasts(session, deal_id=deal_id)
    current = sales_inputs.standing(await sales_inputs.forecast_versions(session, deal_id))
    if current is None:
        raise not_found(f"forecast for deal {deal_id!r}")
    return ForecastVersion.model_validate(current)


@router.get(
    "/forecasts/{deal_id}/history",
    summary="Every version of a deal's forecast, in recording order",
    responses=_READ_RESPONSES,
)
async def get_forecast_history(session: Session, _: Reader, deal_id: DealId) -> ForecastHistory:
    await sales_inputs.record_event_forecasts(session, deal_id=deal_id)
    versions = await sales_inputs.forecast_versions(session, deal_id)
    current = sales_inputs.standing(versions)
    if current is None:
        raise not_found(f"forecast for deal {deal_id!r}")
    return ForecastHistory(
        deal_id=deal_id,
        current_version=current.version,
        versions=[ForecastVersion.model_validate(v) for v in versions],
    )


# --- metrics ---------------------------------------------------------------------------


@router.get(
    "/metrics/sales",
    tags=["metrics"],
    summary="Sales and pipeline metrics per month or quarter",
    description="Per calendar period (UTC) overlapping [`from`, `to`): average sales "
    "cycle, average deal size, win rate, churn rate, deal slippage, pipeline coverage, "
    "incremental ROMI and the lead score distribution. Each figure is a number or null "
    "with a reason (nothing to divide by, a missing quota or spend), never NaN. "
    "`channel`, `source` (UTM) and `industry` select leads by their first touch and "
    "account; `breakdown` adds the figures per segment. `owner` picks the rep or team "
    "for pipeline coverage and slippage.",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the metrics:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown funnel."},
    },
    response_model_by_alias=True,
)
async def get_sales_metrics(
    request: Request,
    session: Session,
    _: Reader,
    start: Annotated[date, Query(alias="from", description="First day (inclusive).")],
    end: Annotated[date, Query(alias="to", description="Last day (exclusive).")],
    period: Literal["month", "quarter"] = "month",
    funnel: Annotated[
        str, Query(max_length=100, description="Whose named scores to report.")
    ] = DEFAULT_FUNNEL,
    currency: Annotated[
        str | None,
        Query(pattern=r"^[A-Z]{3}$", description="Count only amounts in this currency."),
    ] = None,
    owner: Annotated[
        str | None,
        Query(
            pattern=r"^(rep|team):\S.{0,254}$",
            description="`rep:<id>` or `team:<id>`: whose quota and forecasts.",
        ),
    ] = None,
    channel: Annotated[
        Channel | None, Query(description="Leads whose first touch came on this channel.")
    ] = None,
    industry: Annotated[
        str | None, Query(min_length=1, max_length=255, description="Leads of this industry.")
    ] = None,
    source: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="Leads whose first touch's UTM source."),
    ] = None,
    breakdown: Literal["channel", "industry", "source"] | None = None,
    score_bin_width: Annotated[float, Query(gt=0, le=1_000_000, allow_inf_nan=False)] = 10.0,
) -> SalesMetrics:
    check_funnel(request, funnel)
    if start >= end:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "Empty date range.",
            details=[ErrorDetail(field="to", reason="must be after from")],
        )
    for field, day in (("from", start), ("to", end)):
        if not FIRST_YEAR <= day.year <= LAST_YEAR:
            raise ApiError(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "schema_violation",
                "Date out of range.",
                details=[ErrorDetail(field=field, reason=f"years {FIRST_YEAR} to {LAST_YEAR}")],
            )
    count = count_periods(period, start, end)
    if count > sales_metrics.MAX_PERIODS:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "limit_exceeded",
            "Date range too long.",
            details=[
                ErrorDetail(
                    field="to",
                    reason=f"at most {sales_metrics.MAX_PERIODS} periods; this range has {count}",
                )
            ],
        )
    kind, name = owner.split(":", 1) if owner else ("", "")
    query = sales_metrics.SalesQuery(
        kind=period,
        start=start,
        end=end,
        funnel=request.app.state.funnels[funnel],
        now=datetime.now(UTC),
        currency=currency,
        owner=(kind, name) if owner else None,
        channel=channel.value if channel else None,
        industry=industry,
        source=source,
        breakdown=breakdown,
        score_bin_width=score_bin_width,
    )
    return await sales_metrics.sales_metrics(session, query)
