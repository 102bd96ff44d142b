"""Metrics API routes: thin handlers over service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status

from leadstage.credentials import SCOPE_READ_LEADS, Caller
from leadstage.funnels import DEFAULT_FUNNEL
from leadstage.http import ERROR_RESPONSES, ApiError, ErrorDetail, ErrorEnvelope
from leadstage_api import service
from leadstage_api.dependencies import Session, require_scope
from leadstage_api.schemas import LeadView

router = APIRouter(prefix="/v1", tags=["leads"])


@router.get(
    "/leads/{lead_id}",
    summary="A lead's current stage and its stage history",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the leads:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown lead, or unknown funnel."},
    },
)
async def get_lead(
    request: Request,
    session: Session,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_LEADS))],
    lead_id: Annotated[str, Path(max_length=262, description="The lead's id (its lead key).")],
    funnel: Annotated[str, Query(max_length=100)] = DEFAULT_FUNNEL,
) -> LeadView:
    funnels = request.app.state.funnels
    if funnel not in funnels:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            "not_found",
            f"Unknown funnel {funnel!r}.",
            details=[ErrorDetail(field="funnel", reason=f"active: {', '.join(sorted(funnels))}")],
        )
    lead = await service.get_lead(
        session, lead_id, funnel=funnel, history_limit=request.app.state.settings.history_page_max
    )
    if lead is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No lead {lead_id!r} in {funnel}.")
    return lead
