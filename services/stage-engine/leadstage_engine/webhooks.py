"""Webhooks: published changes POSTed to subscribed HTTP endpoints (a CRM, a mailer).

Consumers of their own read the published topics (group ``<consumer_group>-webhooks``
for lead-stage-changed, ``<consumer_group>-account-webhooks`` for
account-stage-changed), so a slow or dead endpoint never holds up the engine.
Each delivery is signed: ``X-LeadStage-Signature: sha256=<hex HMAC-SHA256 of the
body with the subscription's secret>``, with the ``X-LeadStage-Change-Id`` the
receiver uses to drop repeats (delivery is at least once). A failing endpoint is
retried with exponential backoff; after ``max_attempts`` the change goes to
``webhook_dead_letters`` and delivery moves on. Positions are stored in
PostgreSQL after each batch is delivered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from leadstage.db.models import WebhookDeadLetter, WebhookSubscription
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.transport.base import Record, RecordSource, TopicPartition
from leadstage_engine.processing import load_offsets, next_offsets, store_offsets

logger = logging.getLogger(__name__)

SUBSCRIPTIONS_CACHE_SECONDS = 5.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    secret: str
    events: frozenset[str]
    funnels: frozenset[str]

    def wants(self, change: Mapping[str, object]) -> bool:
        return (not self.events or change.get("event") in self.events) and (
            not self.funnels or change.get("funnel") in self.funnels
        )


class WebhookDispatcher:
    def __init__(
        self,
        sessions: SessionFactory,
        source: RecordSource,
        *,
        group: str,
        max_attempts: int = 5,
        first_retry_seconds: float = 0.5,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._source = source
        self._group = group
        self._max_attempts = max_attempts
        self._first_retry = first_retry_seconds
        self._timeout = timeout_seconds
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._subscriptions: tuple[float, list[Subscription]] = (0.0, [])

    # AssignmentListener: positions live in PostgreSQL, as for the engine.
    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        async with unit_of_work(self._sessions) as session:
            return await load_offsets(session, self._group, partitions)

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            return

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._source.start(self)
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                while not self._stopping.is_set():
                    records = await self._source.getmany(timeout_ms=300, max_records=1000)
                    if records:
                        async with self._lock:
                            await self._deliver_until_stored(http, records)
        finally:
            await self._source.stop()

    async def _deliver_until_stored(
        self, http: httpx.AsyncClient, records: Sequence[Record]
    ) -> None:
        """Deliver the batch and store its position, again after a database error (the
        lost connection of a failover, say) until that works or the dispatcher stops: a
        dispatcher that ended on it would deliver nothing more while the engine goes on.
        A repeat delivers the batch's changes again, with the same change ids, as a
        restart would."""
        while True:
            try:
                await self._deliver_batch(http, records)
                return
            except (SQLAlchemyError, OSError) as error:
                logger.warning(
                    "webhook dispatcher could not store its position (%r); retrying", error
                )
                if self._stopping.is_set():
                    return  # not stored: delivered again after the restart
                await asyncio.sleep(1)

    async def _active(self) -> list[Subscription]:
        loaded_at, cached = self._subscriptions
        if time.monotonic() - loaded_at < SUBSCRIPTIONS_CACHE_SECONDS:
            return cached
        async with self._sessions() as session:
            rows = await session.scalars(
                select(WebhookSubscription).where(WebhookSubscription.disabled_at.is_(None))
            )
            active = [
                Subscription(r.id, r.url, r.secret, frozenset(r.events), frozenset(r.funnels))
                for r in rows
            ]
        self._subscriptions = (time.monotonic(), active)
        return active

    async def _deliver_batch(self, http: httpx.AsyncClient, records: Sequence[Record]) -> None:
        subscriptions = await self._active()
        dead: list[dict[str, object]] = []
        # No subscription (the common case): only the position moves, nothing is parsed.
        for record in records if subscriptions else ():
            try:
                change = json.loads(record.value)
            except ValueError:
                continue  # not ours to judge: the engine writes this topic
            for subscription in subscriptions:
                if subscription.wants(change):
                    failure = await self._deliver(http, subscription, record.value, change)
                    if failure is not None:
                        dead.append(failure)
        async with unit_of_work(self._sessions) as session:
            if dead:
                session.add_all(WebhookDeadLetter(**row) for row in dead)
            await store_offsets(session, self._group, next_offsets(records))

    async def _deliver(
        self,
        http: httpx.AsyncClient,
        subscription: Subscription,
        body: bytes,
        change: Mapping[str, object],
    ) -> dict[str, object] | None:
        headers = {
            "Content-Type": "application/json",
            "X-LeadStage-Signature": signature(subscription.secret, body),
            "X-LeadStage-Change-Id": str(change.get("change_id", "")),
            "X-LeadStage-Event": str(change.get("event", "")),
        }
        error = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = await http.post(subscription.url, content=body, headers=headers)
                if response.status_code < 300:
                    return None
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"[:1000]
            if attempt < self._max_attempts and not self._stopping.is_set():
                await asyncio.sleep(self._first_retry * 2 ** (attempt - 1))
        logger.warning(
            "webhook dead-lettered subscription=%s change_id=%s after %s attempts: %s",
            subscription.id,
            change.get("change_id"),
            self._max_attempts,
            error,
        )
        return {
            "subscription_id": subscription.id,
            "change_id": str(change.get("change_id", "")),
            "payload": body,
            "attempts": self._max_attempts,
            "last_error": error,
        }
