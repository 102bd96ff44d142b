"""The ingest process: FastAPI app wiring."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter
from starlette.types import ASGIApp

from leadstage.credentials import allowed_origins
from leadstage.db.session import (
    SessionFactory,
    create_session_factory,
    ping,
    unit_of_work,
)
from leadstage.events import TouchpointIn
from leadstage.gc_tuning import tune_garbage_collector
from leadstage.http import (
    BodySizeLimitMiddleware,
    RejectNulCharacters,
    health_router,
    install_error_handlers,
)
from leadstage.settings import IngestSettings
from leadstage.supervision import TaskFailures, stop_failed_app
from leadstage.transport import create_publisher
from leadstage.transport.kafka import KafkaRecordSource
from leadstage_ingest.database import create_ingest_engine
from leadstage_ingest.hot_routes import HotRoutes, body_guards
from leadstage_ingest.raw_intake import RawIntake
from leadstage_ingest.router import HOT_ROUTES, router
from leadstage_ingest.schemas import EventBatch
from leadstage_ingest.service import DeadLetters, Intake, RateLimits, WriteKeys, prune_dedup

logger = logging.getLogger(__name__)


class AllowedOrigins:
    """The union of every active key's CORS origins, cached briefly."""

    def __init__(self, sessions: SessionFactory, ttl_seconds: float) -> None:
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._cached: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def allowed(self) -> frozenset[str]:
        if self._cached[0] > time.monotonic():
            return self._cached[1]
        async with self._sessions() as session:
            origins = await allowed_origins(session)
        self._cached = (time.monotonic() + self._ttl, origins)
        return origins


def create_app(settings: IngestSettings) -> FastAPI:
    database = create_ingest_engine(settings)
    sessions = create_session_factory(database)
    publisher = create_publisher(settings, sessions)

    # A background task that failed (the dead-letter writer, a group-commit worker...)
    # would leave a process that answers health checks but writes no dead letters, or
    # never answers some requests: stop it instead (exit status 1; the supervisor
    # restarts it).
    failures = TaskFailures(lambda: stop_failed_app(app))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        dead_letters = DeadLetters(publisher, settings.dead_letter_topic)
        failures.watch(dead_letters.start())
        write_keys = WriteKeys(sessions, settings.write_key_cache_seconds)
        intake = Intake(settings, sessions, publisher, dead_letters, database=database)
        for worker in intake.start():
            failures.watch(worker)
        app.state.settings = settings
        app.state.write_keys = write_keys
        app.state.rate_limits = RateLimits(settings.rate_limit_per_second)
        app.state.origins = AllowedOrigins(sessions, settings.write_key_cache_seconds)
        app.state.intake = intake
        pruning = failures.watch(
            asyncio.create_task(
                _prune_dedup_forever(sessions, timedelta(days=settings.dedup_window_days)),
                name="dedup-pruning",
            )
        )
        # Measured under batched load: ~4 s of collection in ~12 s of CPU before, ~1 s after.
        tune_garbage_collector()
        raw_task: asyncio.Task[None] | None = None
        raw: RawIntake | None = None
        if settings.transport == "kafka" and settings.raw_intake_enabled:
            raw_source = KafkaRecordSource(
                settings.kafka_bootstrap_servers,
                topic=settings.raw_touchpoints_topic,
                group=settings.raw_intake_group,
                positions_in_kafka=True,
            )
            raw = RawIntake(settings, sessions, raw_source, intake, write_keys)
            raw_task = failures.watch(asyncio.create_task(_keep_running(raw), name="raw-intake"))
        try:
            yield
        finally:
            if raw is not None and raw_task is not None:
                raw.request_stop()  # finishes the batch in progress, commits its offsets
                _, pending = await asyncio.wait({raw_task}, timeout=15)
                for task in pending:  # e.g. still trying to reach the broker
                    task.cancel()
                await asyncio.gather(raw_task, return_exceptions=True)
            pruning.cancel()
            await asyncio.gather(pruning, return_exceptions=True)
            await intake.stop()
            await dead_letters.stop()
            await publisher.stop()  # flushes anything still buffered
            await database.dispose()

    app = FastAPI(
        title="LeadStage ingest",
        version="1",
        description="Touchpoint intake: websites, ad tools and CRMs post events here, in "
        "LeadStage's schema v1 or Segment's Tracking API format.",
        lifespan=lifespan,
    )
    app.state.failed = False
    install_error_handlers(app)
    body_limits = {
        "/v1/events/batch": settings.max_batch_body_bytes,
        "/v1/batch": settings.max_batch_body_bytes,
    }
    app.add_middleware(RejectNulCharacters)
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, per_path=body_limits
    )
    build_full_stack = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return HotRoutes(
            build_full_stack(),
            routes=HOT_ROUTES,
            exception_handlers=app.exception_handlers,
            guard=body_guards(settings.max_body_bytes, body_limits),
        )

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(
        health_router(lambda: {"database": lambda: ping(database), "transport": publisher.ping})
    )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    _document_bodies(app)
    return app


async def _prune_dedup_forever(sessions: SessionFactory, window: timedelta) -> None:
    """Forget event ids older than the deduplication window, hourly."""
    while True:
        try:
            async with unit_of_work(sessions) as session:
                pruned = await prune_dedup(session, older_than=window)
            if pruned:
                logger.info("pruned %s event ids older than %s", pruned, window)
        except Exception:
            logger.exception("pruning the deduplication window failed")
        await asyncio.sleep(3600)


async def _keep_running(raw: RawIntake) -> None:
    """The raw intake restarts after an unexpected failure instead of dying silently."""
    while True:
        try:
            await raw.run()
            return
        except Exception:
            logger.exception("raw intake failed; restarting in 5s")
            await asyncio.sleep(5)


def _document_bodies(app: FastAPI) -> None:
    """The intake routes parse their bodies themselves (to dead-letter what is bad);
    add the body schemas they reference to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (TouchpointIn, EventBatch):
            generated = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in generated.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = generated
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
