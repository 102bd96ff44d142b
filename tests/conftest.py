"""Shared fixtures: real PostgreSQL and Kafka, one fresh database and topic set per run.

The services are started here if they are not up (idempotently, the same way
`make services-up` does), so no test is ever skipped for want of them.
Each test session gets its own database and topic prefix, so runs never see
each other's data.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.session import SessionFactory, create_engine, create_session_factory
from leadstage.local import services
from leadstage.settings import EngineSettings
from leadstage.transport.kafka import delete_topics_with_prefix


@dataclass(frozen=True)
class Environment:
    """What a LeadStage process of this test run needs in its environment."""

    database_url: str
    kafka_bootstrap_servers: str
    topic_prefix: str

    def variables(self, transport: str = "kafka") -> dict[str, str]:
        return {
            "LEADSTAGE_DATABASE_URL": self.database_url,
            "LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "LEADSTAGE_TOPIC_PREFIX": self.topic_prefix,
            "LEADSTAGE_TRANSPORT": transport,
            "LEADSTAGE_LOG_FORMAT": "text",
        }

    def settings(self, transport: str = "kafka") -> EngineSettings:
        return EngineSettings(
            database_url=self.database_url,
            kafka_bootstrap_servers=self.kafka_bootstrap_servers,
            topic_prefix=self.topic_prefix,
            transport=transport,
        )


def leadstage_cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "leadstage", *args],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


@pytest.fixture(scope="session")
def environment() -> Iterator[Environment]:
    run_id = secrets.token_hex(4)
    database = f"leadstage_test_{run_id}"
    services.up(database=database)
    postgres, kafka = services.local_postgres(), services.local_kafka()
    env = Environment(
        database_url=postgres.url(database),
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=f"test-{run_id}.",
    )
    leadstage_cli("migrate", env=env.variables())
    leadstage_cli("topics", env=env.variables("kafka"))
    leadstage_cli("topics", env=env.variables("postgres"))
    yield env
    postgres.drop_database(database)
    asyncio.run(delete_topics_with_prefix(kafka.bootstrap_servers, env.topic_prefix))


@pytest.fixture(scope="session")
async def database(environment: Environment) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(environment.settings(), application_name="leadstage-tests")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(database: AsyncEngine) -> SessionFactory:
    return create_session_factory(database)


class Receiver:
    """A real HTTP endpoint on loopback that records what it is sent (a webhook
    subscriber)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/leadstage"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    endpoint.thread.start()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()
