"""Ingest's domain logic: authenticate the source, accept a touchpoint durably."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from fastapi import status

from leadstage.credentials import Source, find_write_key
from leadstage.db.session import SessionFactory
from leadstage.events import Touchpoint, TouchpointIn
from leadstage.http import ApiError
from leadstage.settings import IngestSettings
from leadstage.transport.base import OutgoingRecord, Publisher, TransportUnavailableError


class WriteKeys:
    """Write-key lookups with a short cache, so each request is not a database trip.

    A revoked key stops working within ``write_key_cache_seconds``.
    """

    def __init__(self, sessions: SessionFactory, ttl_seconds: float) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Source | None]] = {}

    async def authenticate(self, secret: str | None) -> Source:
        if not secret:
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "A write key is required.",
                headers={"WWW-Authenticate": 'Basic realm="leadstage"'},
            )
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            source = cached[1]
        else:
            async with self._sessions() as session:
                source = await find_write_key(session, secret)
            if len(self._cache) > 10_000:
                self._cache.clear()  # bounded: a flood of bad keys cannot grow it
            self._cache[secret] = (now + self._ttl, source)
        if source is None:
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "The write key is not valid.",
                headers={"WWW-Authenticate": 'Basic realm="leadstage"'},
            )
        return source


class Intake:
    """Accepts touchpoints: 202 only after the transport made them durable."""

    def __init__(self, settings: IngestSettings, publisher: Publisher) -> None:
        self._settings = settings
        self._publisher = publisher
        # Bounded in-flight work: when the broker is slow, callers get 503 at
        # once instead of the process queueing without limit.
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            headers={"Retry-After": str(self._settings.retry_after_seconds)},
        )

    async def accept(self, event: TouchpointIn, source: Source) -> Touchpoint:
        touchpoint = Touchpoint.accept(event, source=source.name, received_at=datetime.now(UTC))
        if self._in_flight.locked():
            raise self._unavailable("Too many events in flight; retry later.")
        async with self._in_flight:
            try:
                await self._publisher.publish(
                    self._settings.touchpoints_topic,
                    [
                        OutgoingRecord(
                            key=touchpoint.lead_key.encode(), value=touchpoint.to_record()
                        )
                    ],
                )
            except TransportUnavailableError as error:
                raise self._unavailable(
                    "The event log did not acknowledge the event; it was not accepted. "
                    "Retry with the same event_id."
                ) from error
        return touchpoint
