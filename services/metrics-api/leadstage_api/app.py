"""The metrics API process: FastAPI app wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leadstage.db.session import create_engine, create_session_factory, ping
from leadstage.http import RejectNulCharacters, health_router, install_error_handlers
from leadstage.settings import ApiSettings
from leadstage_api import accounts, analytics_router, sales
from leadstage_api.dashboard import install_dashboard
from leadstage_api.funnel_catalog import router as funnel_catalog_router
from leadstage_api.router import router


def create_app(settings: ApiSettings) -> FastAPI:
    database = create_engine(settings, application_name="leadstage-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.funnels = settings.active_funnels()
        app.state.sessions = create_session_factory(database)
        try:
            yield
        finally:
            await database.dispose()

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
