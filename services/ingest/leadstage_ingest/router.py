"""Ingest's HTTP routes: thin, the work is in service.py."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, status

from leadstage.credentials import Source
from leadstage.events import TouchpointIn
from leadstage.http import ERROR_RESPONSES, ErrorEnvelope
from leadstage_ingest.schemas import EventAccepted
from leadstage_ingest.service import Intake, WriteKeys

router = APIRouter(prefix="/v1", tags=["events"])


def _basic_username(authorization: str | None) -> str | None:
    """Segment-style HTTP Basic: the write key is the username, the password empty."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


async def authenticated_source(
    request: Request,
    x_write_key: Annotated[
        str | None, Header(description="The source's write key (or use HTTP Basic).")
    ] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Source:
    keys: WriteKeys = request.app.state.write_keys
    return await keys.authenticate(x_write_key or _basic_username(authorization))


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send one touchpoint",
    description="Accepted (202) only once the event is durable in the event log. Re-sending "
    "the same `event_id` is safe: it is stored and counted once.",
    responses={
        **ERROR_RESPONSES,
        413: {"model": ErrorEnvelope, "description": "The body is over the size limit."},
        503: {
            "model": ErrorEnvelope,
            "description": "The event log did not acknowledge; retry after `Retry-After` seconds.",
        },
    },
)
async def post_event(
    event: TouchpointIn,
    request: Request,
    source: Annotated[Source, Depends(authenticated_source)],
) -> EventAccepted:
    intake: Intake = request.app.state.intake
    touchpoint = await intake.accept(event, source)
    return EventAccepted(event_id=touchpoint.event_id, lead_key=touchpoint.lead_key)
