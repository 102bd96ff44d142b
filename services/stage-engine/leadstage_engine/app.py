"""The engine process: the consume loop, with health endpoints beside it.

uvicorn serves ``/healthz`` and ``/readyz`` and owns the signals: SIGTERM
ends the lifespan, which stops the loop between batches (the batch in
progress commits first) and flushes the dead-letter producer. SIGHUP reloads
the funnel definition files (:mod:`leadstage_engine.reload`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leadstage.db.partitions import maintain_touchpoint_partitions
from leadstage.db.session import (
    create_engine,
    create_session_factory,
    ping,
    refuse_closed_connections,
)
from leadstage.gc_tuning import tune_garbage_collector
from leadstage.http import health_router, install_error_handlers
from leadstage.rollup import roll_up_forever
from leadstage.settings import EngineSettings
from leadstage.supervision import TaskFailures, stop_failed_app
from leadstage.transport import create_publisher, create_source
from leadstage_engine.consumer import StageEngine
from leadstage_engine.outbox import relay_forever
from leadstage_engine.reload import LiveFunnels
from leadstage_engine.webhooks import WebhookDispatcher

logger = logging.getLogger(__name__)


def create_app(settings: EngineSettings) -> FastAPI:
    # No pre-ping: it cost three round trips (BEGIN, ping, ROLLBACK) on every
    # transaction, 40 times a second from the two outbox relays alone, about 3% of the
    # engine's CPU. A connection the server closed while pooled is refused at checkout
    # at no cost; one that breaks in use fails its statement, and every user of this
    # pool retries after a database error (the consumer's batch, the relays, the
    # webhook dispatchers, the rollup and partition tasks, the event log's reads).
    database = refuse_closed_connections(
        create_engine(settings, application_name="leadstage-engine", pre_ping=False)
    )
    sessions = create_session_factory(database)
    source = create_source(
        settings, sessions, topic=settings.touchpoints_topic, group=settings.consumer_group
    )
    publisher = create_publisher(settings, sessions)
    funnels = LiveFunnels(settings, sessions)
    engine = StageEngine(settings, sessions, source, dead_letters=publisher, funnels=funnels)
    relay_stopping = asyncio.Event()
    # One dispatcher per published topic (lead and account changes), each with its own
    # consumer group, so a slow endpoint for one kind never delays the other.
    webhooks = [
        WebhookDispatcher(
            sessions,
            create_source(settings, sessions, topic=topic, group=group),
            group=group,
            max_attempts=settings.webhook_max_attempts,
            first_retry_seconds=settings.webhook_first_retry_seconds,
        )
        for topic, group in (
            (settings.lead_stage_changed_topic, f"{settings.consumer_group}-webhooks"),
            (
                settings.account_stage_changed_topic,
                f"{settings.consumer_group}-account-webhooks",
            ),
        )
    ]

    # A failed task stops the process cleanly with exit status 1; the supervisor
    # restarts it, and every task resumes from what is stored in PostgreSQL.
    failures = TaskFailures(lambda: stop_failed_app(app))

    partitions_stopping = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A batch's parsed records and folds (thousands of objects) outlive young
        # collections; without this, full collections took about a fifth of the CPU.
        tune_garbage_collector()
        await publisher.start()
        loop_task = failures.watch(asyncio.create_task(engine.run(), name="stage-engine"))
        webhook_tasks = (
            [
                failures.watch(asyncio.create_task(dispatcher.run(), name=f"webhooks-{n}"))
                for n, dispatcher in enumerate(webhooks)
            ]
            if settings.webhooks_enabled
            else []
        )
        partitions_task = failures.watch(
            asyncio.create_task(
                maintain_touchpoint_partitions(sessions, partitions_stopping),
                name="touchpoint-partitions",
            )
        )
        # The funnel summary's aggregates follow the leads this process (and others) changed.
        rollup_task = failures.watch(
            asyncio.create_task(
                roll_up_forever(
                    sessions,
                    partitions_stopping,
                    every_seconds=settings.rollup_interval_seconds,
                    limit=settings.rollup_batch_leads,
                ),
                name="funnel-rollup",
            )
        )
        relay_tasks = [
            failures.watch(
                asyncio.create_task(
                    relay_forever(sessions, publisher, topic, relay_stopping),
                    name=f"outbox-relay-{topic}",
                )
            )
            for topic in (settings.lead_stage_changed_topic, settings.account_stage_changed_topic)
        ]
        # SIGHUP re-reads the funnel files; a bad file is logged and changes nothing.
        reload_task = failures.watch(
            asyncio.create_task(funnels.reload_on_request(), name="funnel-reload")
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, funnels.request_reload)
        try:
            yield
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            reload_task.cancel()
            await asyncio.gather(reload_task, return_exceptions=True)
            # Checkpoint order: the last batch commits (state, outbox and offsets in one
            # transaction), the relay publishes what is committed, then the producer
            # is flushed and closed.
            engine.request_stop()
            try:
                await asyncio.wait_for(loop_task, timeout=60)
            except Exception:  # noqa: BLE001 - already logged by TaskFailures
                logger.warning("stage engine did not stop cleanly")
            relay_stopping.set()
            _done, undrained = await asyncio.wait(relay_tasks, timeout=30)
            if undrained:
                logger.warning("outbox relay did not drain in time; it resumes on restart")
                for task in undrained:
                    task.cancel()
                await asyncio.gather(*undrained, return_exceptions=True)
            for dispatcher in webhooks:
                dispatcher.request_stop()
            if webhook_tasks:
                _done, pending = await asyncio.wait(webhook_tasks, timeout=15)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*webhook_tasks, return_exceptions=True)
            partitions_stopping.set()
            await asyncio.gather(partitions_task, rollup_task, return_exceptions=True)
            await publisher.stop()
            await database.dispose()

    app = FastAPI(title="LeadStage stage engine", lifespan=lifespan, docs_url=None)
    app.state.failed = False
    install_error_handlers(app)
    app.include_router(
        health_router(lambda: {"database": lambda: ping(database), "transport": source.ping})
    )
    return app
