"""Metrics API routes: thin handlers over service.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel

from leadstage.credentials import SCOPE_READ_LEADS, SCOPE_READ_METRICS, Caller
from leadstage.funnels import DEFAULT_FUNNEL
from leadstage.http import ERROR_RESPONSES, ApiError, ErrorDetail, ErrorEnvelope
from leadstage_api import funnel_metrics, service
from leadstage_api.dependencies import SingleStatementConnection, require_scope
from leadstage_api.periods import check_span
from leadstage_api.schemas import FunnelSummary, LeadPage, LeadView
from leadstage_api.segments import Segmentation, segmentation_params

DEFAULT_SEGMENTATION = Segmentation()

router = APIRouter(prefix="/v1", tags=["leads"])


@router.get(
    "/leads/{lead_id}",
    summary="A lead's current stage and its stage history",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the leads:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown lead, or unknown funnel."},
    },
    response_model=LeadView,
)
async def get_lead(
    request: Request,
    connection: SingleStatementConnection,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_LEADS))],
    lead_id: Annotated[str, Path(max_length=262, description="The lead's id (its lead key).")],
    funnel: Annotated[str, Query(max_length=100)] = DEFAULT_FUNNEL,
) -> Response:
    check_funnel(request, funnel)
    # An id merged into another lead (an alias, a known lead absorbing an anonymous
    # one) answers with the lead it now belongs to.
    lead = await service.get_lead(
        connection,
        "lead_id",
        lead_id,
        funnel=funnel,
        history_limit=request.app.state.settings.history_page_max,
    )
    if lead is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No lead {lead_id!r} in {funnel}.")
    return json_response(lead)


def json_response(view: BaseModel) -> Response:
    """The view as JSON, as the declared ``response_model`` would render it. FastAPI
    would dump the model, validate the dump against the model again and serialise that:
    on the hot lookup path, serialising the already valid model once is enough."""
    return Response(view.model_dump_json(), media_type="application/json")


def check_funnel(request: Request, funnel: str) -> None:
    funnels = request.app.state.funnels
    if funnel not in funnels:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            "not_found",
            f"Unknown funnel {funnel!r}.",
            details=[ErrorDetail(field="funnel", reason=f"active: {', '.join(sorted(funnels))}")],
        )


@router.get(
    "/leads",
    summary="Find a lead by email or anonymous id, or list a funnel's leads",
    description="With `email` or `anonymous_id`: that person's lead (as `GET /v1/leads/{id}`). "
    "Otherwise a page of the funnel's leads, filtered by `stage` and `sales_ready`, in lead id "
    "order; follow `next_cursor`.",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the leads:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown person, funnel or stage."},
    },
    response_model=LeadView | LeadPage,
)
async def find_leads(
    request: Request,
    connection: SingleStatementConnection,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_LEADS))],
    funnel: Annotated[str, Query(max_length=100)] = DEFAULT_FUNNEL,
    email: Annotated[str | None, Query(min_length=3, max_length=320)] = None,
    anonymous_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    stage: Annotated[str | None, Query(max_length=100)] = None,
    sales_ready: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=262)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> LeadView | LeadPage:
    check_funnel(request, funnel)
    if email is not None or anonymous_id is not None:
        kind, value = (
            ("email", email.strip().lower())
            if email is not None
            else ("anonymous_id", str(anonymous_id))
        )
        lead = await service.get_lead(
            connection,
            kind,
            value,
            funnel=funnel,
            history_limit=request.app.state.settings.history_page_max,
        )
        if not lead:
            raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No lead with that {kind}.")
        return lead
    if stage is not None:
        definition = request.app.state.funnels[funnel]
        if stage not in (*definition.stages, *definition.exits):
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                "not_found",
                f"Unknown stage {stage!r} in {funnel}.",
                details=[ErrorDetail(field="stage", reason="not a stage or exit of the funnel")],
            )
    return await service.list_leads(
        connection, funnel=funnel, stage=stage, sales_ready=sales_ready, after=cursor, limit=limit
    )


@router.get(
    "/funnels/{funnel}/summary",
    tags=["funnels"],
    summary="Per stage: current, reached, conversion, drop-off (in progress vs dropped)",
    description="Over the leads that entered the funnel in [`from`, `to`). A lead that "
    "skipped stages counts as having reached them. Rates with nothing to divide by are "
    "null with a reason. Segment filters (`industry`, `size_band`, `country`, `tier`: the "
    "account's; `channel`, `campaign`, `source`: the first touch's), `breakdown=<dimension>` "
    "for the figures per segment value, and `unit=account` to count accounts (furthest "
    "contact) as in the analytics reports.",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the metrics:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown funnel."},
    },
)
async def funnel_summary(
    request: Request,
    connection: SingleStatementConnection,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_METRICS))],
    funnel: Annotated[str, Path(max_length=100)],
    entered_from: Annotated[datetime | None, Query(alias="from")] = None,
    entered_to: Annotated[datetime | None, Query(alias="to")] = None,
    window_days: Annotated[int, Query(ge=1, le=365)] = 30,
    segmentation: Annotated[Segmentation, Depends(segmentation_params)] = DEFAULT_SEGMENTATION,
) -> FunnelSummary:
    check_funnel(request, funnel)
    for name, value in (("from", entered_from), ("to", entered_to)):
        if value is not None and value.tzinfo is None:
            raise ApiError(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "schema_violation",
                "Naive time.",
                details=[ErrorDetail(field=name, reason="give a time zone offset")],
            )
    if entered_from and entered_to and entered_from >= entered_to:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "schema_violation",
            "Empty date range.",
            details=[ErrorDetail(field="to", reason="must be after from")],
        )
    if entered_from and entered_to:
        check_span(entered_from, entered_to)  # the analytics reports' two-year cap
    return await funnel_metrics.summary(
        connection,
        request.app.state.funnels[funnel],
        entered_from=entered_from,
        entered_to=entered_to,
        as_of=entered_to or datetime.now(UTC),
        window=timedelta(days=window_days),
        segmentation=segmentation,
    )
