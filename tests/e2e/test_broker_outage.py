"""The broker stops while clients post: they get 503, never a 202 for an event that is
then missing; after the broker returns, every 202-acknowledged event is in the topic.

Runs its own Kafka broker (same jars, another port and data directory), so stopping it
does not disturb the other tests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from leadstage.db.session import SessionFactory
from leadstage.local import cache_dir
from leadstage.local.kafka import LocalKafka, wait_until_serving
from leadstage.transport import create_topics
from leadstage.transport.kafka import KafkaRecordSource
from tests.conftest import Environment
from tests.e2e.conftest import free_port, start_service
from tests.integration.test_transports import StoredPositions


def free_port_pair() -> int:
    for _ in range(50):
        port = free_port()
        try:
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    kafka = LocalKafka(root=tmp_path / "kafka", port=free_port_pair(), cache=cache_dir())
    kafka.start()
    wait_until_serving(kafka.bootstrap_servers)
    yield kafka
    kafka.stop()


async def test_no_202_is_lost_when_the_broker_stops_and_returns(
    broker: LocalKafka, environment: Environment, sessions: SessionFactory
) -> None:
    settings = environment.settings("kafka").model_copy(
        update={
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "topic_prefix": f"outage-{secrets.token_hex(3)}.",
        }
    )
    await create_topics(settings, sessions)
    from tests.conftest import leadstage_cli
    from tests.e2e.conftest import last_line

    env = {
        **environment.variables("kafka"),
        "LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "LEADSTAGE_TOPIC_PREFIX": settings.topic_prefix,
        "LEADSTAGE_PRODUCE_TIMEOUT_SECONDS": "2",
        "LEADSTAGE_RAW_INTAKE_ENABLED": "false",
    }
    key = last_line(leadstage_cli("keys", "create", "--source", "outage", env=env))
    ingest = start_service("ingest", env, "outage")
    statuses: dict[str, int] = {}
    stop_posting = asyncio.Event()

    async def post_forever(http: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not stop_posting.is_set():
            event_id = f"outage-{worker}-{n}"
            n += 1
            try:
                response = await http.post(
                    f"{ingest.url}/v1/events",
                    headers={"X-Write-Key": key},
                    json={
                        "event_id": event_id,
                        "type": "page_view",
                        "lead_id": f"l-{n % 13}",
                        "occurred_at": "2026-11-20T10:00:00Z",
                    },
                )
                statuses[event_id] = response.status_code
                if response.status_code == 503:
                    assert int(response.headers["retry-after"]) > 0
            except httpx.TimeoutException:
                statuses[event_id] = 0  # no answer: not acknowledged
            await asyncio.sleep(0.01)

    try:
        async with httpx.AsyncClient(timeout=15) as http:
            workers = [asyncio.create_task(post_forever(http, w)) for w in range(4)]
            await asyncio.sleep(2)
            started = time.monotonic()
            # The broker dies mid-stream (kill -9).
            await asyncio.to_thread(broker.stop, grace_seconds=0)
            phases = {"killed": time.monotonic() - started}
            await asyncio.sleep(6)
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(wait_until_serving, broker.bootstrap_servers)
            phases["back"] = time.monotonic() - started
            deadline = time.monotonic() + 60
            accepted_before = sum(s == 202 for s in statuses.values())
            # Wait until the producer has reconnected and acks again.
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                if sum(s == 202 for s in statuses.values()) > accepted_before + 20:
                    break
            phases["acking again"] = time.monotonic() - started
            stop_posting.set()
            await asyncio.gather(*workers)
    finally:
        ingest.stop()

    acknowledged = {e for e, s in statuses.items() if s == 202}
    unavailable = {e for e, s in statuses.items() if s == 503}
    print(f"outage phases (s): {phases}")  # noqa: T201 - shown with -s, for tuning
    assert set(statuses.values()) <= {202, 503, 0}, set(statuses.values())
    assert len(unavailable) > 0, "no client was told the broker was away"
    assert len(acknowledged) > 40

    source = KafkaRecordSource(
        broker.bootstrap_servers,
        topic=settings.touchpoints_topic,
        group=f"outage-check-{secrets.token_hex(3)}",
    )
    await source.start(StoredPositions())
    in_topic: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        while not acknowledged <= in_topic and time.monotonic() < deadline:
            for record in await source.getmany(timeout_ms=500, max_records=1000):
                in_topic.add(json.loads(record.value)["event_id"])
    finally:
        await source.stop()
    missing = acknowledged - in_topic
    assert not missing, f"{len(missing)} acknowledged events missing, e.g. {sorted(missing)[:5]}"
