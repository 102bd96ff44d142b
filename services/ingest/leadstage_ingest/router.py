"""Ingest's HTTP routes: thin; parsing and acceptance live in intake.py and service.py."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response, status

from leadstage.credentials import Source
from leadstage.http import ApiError, ErrorEnvelope
from leadstage_ingest import intake as http_intake
from leadstage_ingest import segment
from leadstage_ingest.schemas import (
    BatchResult,
    EventBatch,
    EventResult,
    SegmentAccepted,
    openapi_body,
)
from leadstage_ingest.service import Intake, RateLimits, WriteKeys

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["events"])

INTAKE_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorEnvelope, "description": "The body is not valid JSON."},
    401: {"model": ErrorEnvelope, "description": "No write key, or a wrong or revoked one."},
    413: {"model": ErrorEnvelope, "description": "The body or the batch is over its limit."},
    422: {"model": ErrorEnvelope, "description": "Schema violation; `details` names the field."},
    429: {"model": ErrorEnvelope, "description": "The key is over its rate; see `Retry-After`."},
    503: {
        "model": ErrorEnvelope,
        "description": "The event log did not acknowledge; nothing was accepted. Retry after "
        "`Retry-After` seconds with the same event ids.",
    },
}


def basic_username(authorization: str | None) -> str | None:
    """Segment-style HTTP Basic: the write key is the username, the password empty."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


async def presented_key(  # async: a plain def would cost a thread hop per request
    x_write_key: Annotated[
        str | None, Header(description="The source's write key (or use HTTP Basic).")
    ] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str | None:
    return x_write_key or basic_username(authorization)


PresentedKey = Annotated[str | None, Depends(presented_key)]


async def _authenticated(request: Request, key: str | None) -> Source:
    keys: WriteKeys = request.app.state.write_keys
    return await keys.authenticate(key)


async def _rate_limited(request: Request, source: Source, events: int) -> None:
    rate_limits: RateLimits = request.app.state.rate_limits
    await rate_limits.take(
        source, max(events, 1), retry_after=request.app.state.settings.retry_after_seconds
    )


async def _authorised(request: Request, key: str | None, events: int) -> Source:
    source = await _authenticated(request, key)
    await _rate_limited(request, source, events)
    return source


def _cors(request: Request, response: Response, source: Source) -> None:
    origin = request.headers.get("origin")
    if origin and origin in source.allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


async def _cors_on_error(request: Request, error: ApiError, source: Source | None) -> None:
    """Let a browser read an error answer (a 422's reason, a 429's ``Retry-After``): its
    origin is allowed as the success answer would allow it, by the source's key, or,
    before the key is known (a 401), as the CORS preflight allows it."""
    origin = request.headers.get("origin")
    if not origin:
        return
    if source is not None:
        allowed = origin in source.allowed_origins
    else:
        try:
            allowed = origin in await request.app.state.origins.allowed()
        except Exception:
            logger.warning("allowed origins not read for an error answer", exc_info=True)
            return
    if allowed:
        error.headers["Access-Control-Allow-Origin"] = origin
        error.headers["Vary"] = "Origin"


async def accept_event(request: Request, key: str | None) -> Response:
    """``POST /v1/events``: one touchpoint, answered once it is durable."""
    source: Source | None = None
    try:
        body = await request.body()
        source = await _authorised(request, key, 1)
        intake: Intake = request.app.state.intake
        result = await http_intake.single_event(intake, body, source)
    except ApiError as error:
        await _cors_on_error(request, error, source)
        raise
    return _accepted(request, source, result.model_dump_json().encode())


async def accept_batch(request: Request, key: str | None) -> Response:
    """``POST /v1/events/batch``: up to 500 touchpoints, answered per event."""
    source: Source | None = None
    try:
        body = await request.body()
        source = await _authenticated(request, key)  # 401 before anything about the body
        intake: Intake = request.app.state.intake
        events = http_intake.parse_native_batch(body, request.app.state.settings.max_batch_events)
        await _rate_limited(request, source, len(events))
        outcomes = await http_intake.native_batch(intake, events, source, body=body)
    except ApiError as error:
        await _cors_on_error(request, error, source)
        raise
    return _accepted(request, source, http_intake.batch_result_json(outcomes))


def _accepted(request: Request, source: Source, content: bytes) -> Response:
    """202 with a body already serialised (it has the documented response model's shape:
    FastAPI would validate the model again and serialise it, per request)."""
    response = Response(
        content, status_code=status.HTTP_202_ACCEPTED, media_type="application/json"
    )
    _cors(request, response, source)
    return response


def request_key(request: Request) -> str | None:
    """What ``presented_key`` reads, straight from the headers."""
    headers = request.headers
    return headers.get("x-write-key") or basic_username(headers.get("authorization"))


async def post_event_fast(request: Request) -> Response:
    return await accept_event(request, request_key(request))


async def post_batch_fast(request: Request) -> Response:
    return await accept_batch(request, request_key(request))


#: The two hot intake routes, served ahead of the framework's middleware stack (see
#: hot_routes.py): FastAPI's per-request dependency solving, its sub-response and its
#: response-model validation cost more CPU than the rest of a single-event request's
#: handling. Same handlers, same error envelope (errors are answered by the app's
#: exception handlers either way); the OpenAPI document comes from the routes below.
HOT_ROUTES = {"/v1/events": post_event_fast, "/v1/events/batch": post_batch_fast}


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send one touchpoint",
    description="202 only once the event is durable in the event log. Re-sending the same "
    "`event_id` is safe: the answer is `duplicate` and it is stored and counted once.",
    responses=INTAKE_ERRORS,
    response_model=EventResult,
    openapi_extra=openapi_body(http_intake.TouchpointBody),
)
async def post_event(request: Request, key: PresentedKey) -> Response:
    return await accept_event(request, key)


@router.post(
    "/events/batch",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send up to 500 touchpoints",
    description="Each event is accepted, a duplicate, or rejected with its field and reason; "
    "a bad event does not reject the good ones. Rejected events go to the dead-letter topic.",
    responses=INTAKE_ERRORS,
    response_model=BatchResult,
    openapi_extra=openapi_body(EventBatch),
)
async def post_batch(request: Request, key: PresentedKey) -> Response:
    return await accept_batch(request, key)


def _segment_route(message_type: str) -> None:
    async def post_segment(
        request: Request, response: Response, key: PresentedKey
    ) -> SegmentAccepted:
        source: Source | None = None
        try:
            body = await request.body()
            intake: Intake = request.app.state.intake
            # The key may be in the body: only a key in the headers is known before parsing.
            source = await _authenticated(request, key) if key else None
            message = http_intake.parse_object(body)
            source = source or await _authenticated(request, http_intake.body_write_key(message))
            await _rate_limited(request, source, 1)
            result = await http_intake.segment_messages(
                intake, [message], source, expected_type=message_type, body_size=len(body)
            )
        except ApiError as error:
            await _cors_on_error(request, error, source)
            raise
        _cors(request, response, source)
        return result

    router.add_api_route(
        f"/{message_type}",
        post_segment,
        methods=["POST"],
        status_code=status.HTTP_200_OK,
        tags=["segment"],
        summary=f"Segment-compatible `{message_type}`",
        description="Accepts the Segment Tracking API's payload; the write key as the HTTP "
        "Basic username (empty password), in `X-Write-Key`, or as `writeKey` in the body.",
        responses=INTAKE_ERRORS,
        response_model=SegmentAccepted,
    )


for _type in segment.SegmentMessageType:
    _segment_route(_type.value)


@router.post(
    "/batch",
    status_code=status.HTTP_200_OK,
    tags=["segment"],
    summary="Segment-compatible `batch`",
    responses=INTAKE_ERRORS,
)
async def post_segment_batch(
    request: Request, response: Response, key: PresentedKey
) -> SegmentAccepted:
    source: Source | None = None
    try:
        body = await request.body()
        intake: Intake = request.app.state.intake
        source = await _authenticated(request, key) if key else None
        envelope = http_intake.parse_object(body)
        source = source or await _authenticated(request, http_intake.body_write_key(envelope))
        messages = http_intake.segment_batch_messages(
            envelope, request.app.state.settings.max_batch_events
        )
        await _rate_limited(request, source, len(messages))
        result = await http_intake.segment_messages(
            intake, messages, source, envelope=envelope, body_size=len(body)
        )
    except ApiError as error:
        await _cors_on_error(request, error, source)
        raise
    _cors(request, response, source)
    return result


@router.options("/{path:path}", include_in_schema=False)
async def preflight(request: Request, path: str) -> Response:
    """CORS preflight. It carries no write key, so an origin is allowed here if any
    active key allows it; the actual response allows it only for its own key."""
    origin = request.headers.get("origin")
    allowed = await request.app.state.origins.allowed()
    if not origin or origin not in allowed:
        raise ApiError(status.HTTP_403_FORBIDDEN, "forbidden", "Origin not allowed.")
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Write-Key",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )
