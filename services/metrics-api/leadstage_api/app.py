"""The metrics API process: FastAPI app wiring."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from leadstage.credentials import CachedLookup, find_api_token
from leadstage.db.session import (
    SessionFactory,
    create_engine,
    create_session_factory,
    ping,
    unit_of_work,
)
from leadstage.funnels import Funnel, FunnelDefinitionError
from leadstage.funnels.registry import active_funnels
from leadstage.http import RejectNulCharacters, health_router, install_error_handlers
from leadstage.logs import configure_logging
from leadstage.settings import ApiSettings
from leadstage_api import accounts, analytics_router, sales
from leadstage_api.dashboard import install_dashboard
from leadstage_api.funnel_catalog import router as funnel_catalog_router
from leadstage_api.router import router

logger = logging.getLogger(__name__)


async def follow_active_versions(
    app: FastAPI,
    sessions: SessionFactory,
    configured: Mapping[str, Funnel],
    settings: ApiSettings,
    stopping: asyncio.Event,
) -> None:
    """Describe each funnel as the registry's active version, as the stored states were
    computed (a changed file waits as a pending version until a replay switches over)."""
    while not stopping.is_set():
        try:
            async with unit_of_work(sessions) as session:
                app.state.funnels = await active_funnels(session, configured, settings.funnels)
        except (SQLAlchemyError, OSError, FunnelDefinitionError) as error:
            logger.warning("funnel versions not read (%r); keeping the current ones", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=settings.funnel_refresh_seconds)


def create_app(settings: ApiSettings) -> FastAPI:
    database = create_engine(settings, application_name="leadstage-api")
    single_statement_database = create_engine(
        settings, application_name="leadstage-api-lookups", autocommit=True
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configured = settings.active_funnels()
        app.state.settings = settings
        app.state.funnels = configured
        app.state.sessions = sessions = create_session_factory(database)
        app.state.single_statement_database = single_statement_database
        app.state.tokens = CachedLookup(sessions, find_api_token, settings.token_cache_seconds)
        stopping = asyncio.Event()
        refresher = asyncio.create_task(
            follow_active_versions(app, sessions, configured, settings, stopping),
            name="funnel-versions",
        )
        # Everything allocated so far (modules, the app, pydantic's validators) lives as
        # long as the process: out of the collector's sight, a full collection no longer
        # walks it in the middle of a request, which showed as tail latency.
        gc.freeze()
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(refresher, return_exceptions=True)
            await database.dispose()
            await single_statement_database.dispose()

    app = FastAPI(
        title="LeadStage metrics API",
        version="1",
        description="Where each lead stands in the funnel, for internal services.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RejectNulCharacters)
    app.include_router(router)
    app.include_router(accounts.router)
    app.include_router(analytics_router.router)
    app.include_router(funnel_catalog_router)
    install_dashboard(app)
    app.include_router(sales.router)
    app.include_router(health_router(lambda: {"database": lambda: ping(database)}))
    return app


def create_app_from_environment() -> FastAPI:
    """The app of one worker process when ``LEADSTAGE_HTTP_WORKERS`` > 1."""
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format, service="api")
    return create_app(settings)
