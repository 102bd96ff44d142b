"""Poison records produced straight to the topic go to the dead-letter topic with the
reason, and never stop the engine."""

from __future__ import annotations

import json
import secrets
import time

import httpx

from leadstage import dlq
from leadstage.db.session import SessionFactory
from leadstage.settings import ServiceSettings
from leadstage.transport import create_source
from leadstage.transport.base import OutgoingRecord, Record, TopicPartition
from tests.conftest import Environment
from tests.e2e.conftest import Stack
from tests.e2e.test_walking_skeleton import wait_for_stage
from tests.integration.test_transports import publish_all


class FromStart:
    async def on_assigned(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        return None


async def post_a_valid_event_and_see_it_applied(stack: Stack, marker: str) -> None:
    """The engine goes on: a valid event after the poison is applied."""
    lead = f"after-{marker}"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={"type": "page_view", "lead_id": lead, "occurred_at": "2026-11-20T10:00:00Z"},
        )
        assert response.status_code == 202
        await wait_for_stage(http, stack, lead, "Awareness", within=30)


async def dead_letters_keyed(
    settings: ServiceSettings, sessions: SessionFactory, marker: str, count: int
) -> list[Record]:
    """The dead letters whose key is ``marker`` (waits up to 20 s for ``count``)."""
    source = create_source(
        settings, sessions, topic=settings.dead_letter_topic, group=f"dlq-reader-{marker}"
    )
    await source.start(FromStart())
    found: list[Record] = []
    deadline = time.monotonic() + 20
    try:
        while len(found) < count and time.monotonic() < deadline:
            records = await source.getmany(timeout_ms=200, max_records=500)
            found += [r for r in records if r.key == marker.encode()]
    finally:
        await source.stop()
    return found


async def test_poison_records_are_dead_lettered_with_the_reason(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    settings = environment.settings(stack.env["LEADSTAGE_TRANSPORT"])
    marker = f"poison-{secrets.token_hex(4)}"
    poison = [
        OutgoingRecord(key=marker.encode(), value=b"\xff\xfe not json"),
        OutgoingRecord(key=marker.encode(), value=json.dumps({"type": "page_view"}).encode()),
    ]
    await publish_all(settings, sessions, poison)
    await post_a_valid_event_and_see_it_applied(stack, marker)
    found = await dead_letters_keyed(settings, sessions, marker, 2)

    assert [r.value for r in found] == [p.value for p in poison]  # original bytes kept
    reasons = [json.loads(r.headers["leadstage.dlq"]) for r in found]
    assert [r["error_kind"] for r in reasons] == ["json_invalid", "schema_violation"]
    assert all(r["source_topic"] == settings.touchpoints_topic for r in reasons)
    assert reasons[0]["source_offset"] + 1 == reasons[1]["source_offset"]
    assert reasons[1]["message"]


#: Just below a produce request's limit (1 MiB, aiokafka's and the broker's default):
#: the record itself is accepted, but with a dead letter's reason headers it would not be.
NEAR_LIMIT_BYTES = 1_048_576 - 128


async def test_a_record_too_large_to_dead_letter_whole_is_cut_and_does_not_stop_the_engine(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    settings = environment.settings(stack.env["LEADSTAGE_TRANSPORT"])
    marker = f"huge-{secrets.token_hex(4)}"
    huge = b"{" + b"x" * (NEAR_LIMIT_BYTES - 1)  # not JSON: dead-lettered
    await publish_all(settings, sessions, [OutgoingRecord(key=marker.encode(), value=huge)])
    await post_a_valid_event_and_see_it_applied(stack, marker)
    found = await dead_letters_keyed(settings, sessions, marker, 1)

    [letter] = found
    reason = json.loads(letter.headers["leadstage.dlq"])
    assert reason["error_kind"] == "json_invalid"
    assert reason["payload_bytes"] == len(huge)
    assert reason["payload_truncated"] is True
    assert len(letter.value) == dlq.MAX_PAYLOAD_BYTES
    assert huge.startswith(letter.value)
