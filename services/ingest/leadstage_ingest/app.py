"""The ingest process: FastAPI app wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leadstage.db.session import create_engine, create_session_factory, ping
from leadstage.http import BodySizeLimitMiddleware, health_router, install_error_handlers
from leadstage.settings import IngestSettings
from leadstage.transport import create_publisher
from leadstage_ingest.router import router
from leadstage_ingest.service import Intake, WriteKeys


def create_app(settings: IngestSettings) -> FastAPI:
    database = create_engine(settings, application_name="leadstage-ingest")
    sessions = create_session_factory(database)
    publisher = create_publisher(settings, sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        app.state.write_keys = WriteKeys(sessions, settings.write_key_cache_seconds)
        app.state.intake = Intake(settings, publisher)
        try:
            yield
        finally:
            await publisher.stop()  # flushes anything still buffered
            await database.dispose()

    app = FastAPI(
        title="LeadStage ingest",
        version="1",
        description="Touchpoint intake: websites, ad tools and CRMs post events here.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(router)
    app.include_router(
        health_router(lambda: {"database": lambda: ping(database), "transport": publisher.ping})
    )
    return app
