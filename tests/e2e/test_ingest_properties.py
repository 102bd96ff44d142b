"""Property-based: arbitrary JSON and bytes at both intakes never cause a 5xx or stop a
consumer, and every rejected record is in the dead-letter topic with a reason."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadstage import dlq
from leadstage.db.session import create_engine, create_session_factory
from leadstage.transport import create_publisher
from leadstage.transport.base import OutgoingRecord
from tests.conftest import Environment
from tests.e2e.conftest import Stack

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
VALID = {"type": "page_view", "lead_id": "fuzz", "occurred_at": "2026-11-20T10:00:00Z"}
# Near-valid events: one field of a valid event replaced by anything.
near_valid = st.builds(
    lambda field, value: {**VALID, field: value},
    st.sampled_from([*VALID, "email", "account", "utm", "channel", "event_id", "properties"]),
    json_values,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid.map(lambda v: json.dumps(v).encode()),
)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def all_dead_letters(environment: Environment, transport: str) -> list[bytes]:
    async def read() -> list[bytes]:
        config = environment.settings(transport)
        database = create_engine(config, application_name="fuzz-dlq")
        try:
            sessions = create_session_factory(database)
            return [r.value async for r in dlq.dead_letters(config, sessions, idle_seconds=1.5)]
        finally:
            await database.dispose()

    return asyncio.run(read())


def same_payload(rejected: bytes, letter: bytes) -> bool:
    if rejected == letter:
        return True
    try:
        return bool(json.loads(rejected) == json.loads(letter))
    except (ValueError, UnicodeDecodeError):
        return False


def test_http_intake_never_fails_and_dead_letters_every_rejection(
    stack: Stack, environment: Environment
) -> None:
    rejected: list[bytes] = []
    url = f"{stack.ingest.url}/v1/events"

    @FUZZ
    @given(body=bodies)
    def post(body: bytes) -> None:
        response = httpx.post(
            url,
            content=body,
            headers={**stack.write_headers, "content-type": "application/json"},
            timeout=10,
        )
        assert response.status_code in (202, 400, 413, 422), response.text
        if response.status_code in (400, 422):
            error = response.json()["error"]
            assert error["code"]
            assert error["details"][0]["reason"]
            rejected.append(body)

    post()
    assert rejected, "the fuzzer produced no rejection at all"
    letters = all_dead_letters(environment, stack.env["LEADSTAGE_TRANSPORT"])
    missing = [r for r in rejected if not any(same_payload(r, letter) for letter in letters)]
    assert not missing, f"{len(missing)} rejected bodies not dead-lettered, e.g. {missing[:3]}"


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
def test_kafka_raw_intake_survives_arbitrary_records(
    stack: Stack, environment: Environment
) -> None:
    produced: list[bytes] = []

    @FUZZ
    @given(body=bodies)
    def collect(body: bytes) -> None:
        produced.append(body)

    collect()
    marker = secrets.token_hex(4)
    lead = f"after-fuzz-{marker}"
    config = environment.settings("kafka")

    async def produce() -> None:
        database = create_engine(config, application_name="fuzz-produce")
        publisher = create_publisher(config, create_session_factory(database))
        await publisher.start()
        try:
            records = [
                OutgoingRecord(key=b"fuzz", value=body, headers={"write-key": stack.write_key})
                for body in produced
            ]
            # Then a valid record: the consumer must still be alive to forward it.
            records.append(
                OutgoingRecord(
                    key=b"fuzz",
                    value=json.dumps({**VALID, "lead_id": lead}).encode(),
                    headers={"write-key": stack.write_key},
                )
            )
            await publisher.publish(config.raw_touchpoints_topic, records)
        finally:
            await publisher.stop()
            await database.dispose()

    asyncio.run(produce())
    deadline = time.monotonic() + 30
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{stack.api.url}/v1/leads/{lead}", headers=stack.read_headers, timeout=10
        )
        if response.status_code == 200:
            found = response.json()
            break
        time.sleep(0.2)
    assert found.get("stage") == "Awareness", "the raw intake stopped after the fuzz"

    letters = all_dead_letters(environment, "kafka")
    for body in produced:
        if not passes_validation(body):
            assert any(same_payload(body, letter) for letter in letters), body


def passes_validation(body: bytes) -> bool:
    """Would ingest accept this record? (The intake's own checks decide: this test is
    about what happens to the records they refuse.)"""
    from datetime import UTC, datetime

    from leadstage_ingest.intake import native_candidate, segment_candidate
    from leadstage_ingest.raw_intake import is_segment_shaped
    from leadstage_ingest.validation import Limits

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    now = datetime.now(UTC)
    if isinstance(payload, dict) and is_segment_shaped(payload):
        candidate = segment_candidate({"messageId": "m", **payload}, "s", now, Limits())
    else:
        if isinstance(payload, dict):
            payload = {"event_id": "e", **payload}
        candidate = native_candidate(payload, "s", now, Limits())
    return candidate.rejection is None
