"""Ingest end to end, over HTTP, on both transports (and Kafka-only features on Kafka)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from leadstage import dlq
from leadstage.db.models import IdentityMerge, LeadAccount, StoredTouchpoint
from leadstage.db.session import SessionFactory
from tests.conftest import Environment, leadstage_cli
from tests.e2e.conftest import Stack, last_line, start_service
from tests.e2e.test_walking_skeleton import wait_for_stage
from tests.integration.test_transports import publish_all

AT = "2026-11-20T10:00:00Z"


def tag() -> str:
    return secrets.token_hex(4)


async def dead_letters_matching(
    environment: Environment, stack: Stack, sessions: SessionFactory, marker: str, count: int
) -> list[dict[str, Any]]:
    """Dead letters whose payload contains ``marker`` (waits until ``count`` are there)."""
    settings = environment.settings(stack.env["LEADSTAGE_TRANSPORT"])
    deadline = time.monotonic() + 20
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [
            {**dlq.reason_of(record), "payload": record.value.decode(errors="replace")}
            async for record in dlq.dead_letters(settings, sessions, idle_seconds=1)
            if marker.encode() in record.value
        ]
        if len(found) >= count:
            break
        await asyncio.sleep(0.5)
    return found


async def test_a_batch_answers_per_event_and_bad_events_do_not_reject_good_ones(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    marker = tag()
    lead = f"batch-{marker}"
    events = [
        {"event_id": f"{marker}-1", "type": "page_view", "lead_id": lead, "occurred_at": AT},
        {"event_id": f"{marker}-1", "type": "page_view", "lead_id": lead, "occurred_at": AT},
        {
            "event_id": f"{marker}-2",
            "type": "demo_requested",
            "lead_id": lead,
            "occurred_at": "2026-11-20T10:05:00Z",
        },
        {"event_id": f"{marker}-3", "type": "page_view", "lead_id": lead, "occurred_at": "soon"},
        {"event_id": f"{marker}-4", "type": "teleported", "lead_id": lead, "occurred_at": AT},
        "not an object",
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events/batch",
            headers=stack.write_headers,
            json={"events": events},
        )
        assert response.status_code == 202, response.text
        body = response.json()
        await wait_for_stage(http, stack, lead, "Action")

    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 3)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "duplicate", "accepted", "rejected", "rejected", "rejected"]
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert body["results"][3]["error"]["field"] == "occurred_at"
    assert body["results"][4]["error"]["field"] == "type"
    assert body["results"][0]["lead_id"] == lead

    letters = await dead_letters_matching(environment, stack, sessions, f"{marker}-", 2)
    kinds = sorted(letter["error_kind"] for letter in letters)
    assert kinds == ["schema_violation", "schema_violation"]
    assert {letter["field"] for letter in letters} == {"occurred_at", "type"}
    assert all(letter["source"] == "e2e" for letter in letters)


async def test_a_repeated_event_answers_duplicate_and_is_stored_once(
    stack: Stack, sessions: SessionFactory
) -> None:
    event = {
        "event_id": f"dup-{tag()}",
        "type": "page_view",
        "lead_id": f"l-{tag()}",
        "occurred_at": AT,
    }
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(
            f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=event
        )
        again = await http.post(
            f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=event
        )
        await wait_for_stage(http, stack, event["lead_id"], "Awareness")
    assert (first.json()["status"], again.json()["status"]) == ("accepted", "duplicate")
    async with sessions() as session:
        stored = await session.scalars(
            select(StoredTouchpoint.event_id).where(StoredTouchpoint.event_id == event["event_id"])
        )
        assert len(stored.all()) == 1


async def test_an_anonymous_visitor_joins_the_known_lead_on_a_form_fill(
    stack: Stack, sessions: SessionFactory
) -> None:
    anonymous, lead = f"anon-{tag()}", f"known-{tag()}"
    url = f"{stack.ingest.url}/v1/events"
    async with httpx.AsyncClient(timeout=10) as http:
        visit = await http.post(
            url,
            headers=stack.write_headers,
            json={"type": "page_view", "anonymous_id": anonymous, "occurred_at": AT},
        )
        form = await http.post(
            url,
            headers=stack.write_headers,
            json={
                "type": "demo_requested",
                "anonymous_id": anonymous,
                "lead_id": lead,
                "email": f"{lead}@example-corp.io",
                "occurred_at": "2026-11-20T11:00:00Z",
            },
        )
        later = await http.post(
            url,
            headers=stack.write_headers,
            json={
                "type": "page_view",
                "anonymous_id": anonymous,
                "occurred_at": "2026-11-21T11:00:00Z",
            },
        )
        by_email = await http.post(
            url,
            headers=stack.write_headers,
            json={
                "type": "page_view",
                "email": f"{lead}@EXAMPLE-corp.io",
                "occurred_at": "2026-11-21T12:00:00Z",
            },
        )
    assert visit.json()["lead_id"] == f"anon:{anonymous}"
    assert form.json()["lead_id"] == lead
    assert later.json()["lead_id"] == lead  # the anonymous id now resolves to the lead
    assert by_email.json()["lead_id"] == lead
    async with sessions() as session:
        merges = (
            await session.scalars(select(IdentityMerge).where(IdentityMerge.into_lead == lead))
        ).all()
    assert [(m.from_lead, m.reason) for m in merges] == [(f"anon:{anonymous}", "identified")]
    assert ["anonymous_id", anonymous] in merges[0].moved


async def test_contacts_attach_to_accounts_by_company_domain_not_free_mail(
    stack: Stack, sessions: SessionFactory
) -> None:
    company = f"acme-{tag()}.com"
    contacts = {
        f"c1-{tag()}": f"ada@{company}",
        f"c2-{tag()}": f"bob@{company}",
        f"c3-{tag()}": "someone@gmail.com",
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events/batch",
            headers=stack.write_headers,
            json={
                "events": [
                    {"type": "page_view", "lead_id": lead, "email": email, "occurred_at": AT}
                    for lead, email in contacts.items()
                ]
            },
        )
    assert response.json()["accepted"] == 3
    async with sessions() as session:
        rows = await session.execute(
            select(LeadAccount.lead_id, LeadAccount.account_id).where(
                LeadAccount.lead_id.in_(list(contacts))
            )
        )
        links = {lead: account for lead, account in rows}
    leads = list(contacts)
    assert links == {leads[0]: f"domain:{company}", leads[1]: f"domain:{company}"}


async def test_a_key_over_its_rate_gets_429_with_retry_after(stack: Stack) -> None:
    slow_key = last_line(
        leadstage_cli("keys", "create", "--source", "slow", "--rate-limit", "5", env=stack.env)
    )
    events = [{"type": "page_view", "lead_id": f"r-{i}", "occurred_at": AT} for i in range(4)]
    async with httpx.AsyncClient(timeout=10) as http:
        responses = [
            await http.post(
                f"{stack.ingest.url}/v1/events/batch",
                headers={"X-Write-Key": slow_key},
                json={"events": events},
            )
            for _ in range(2)
        ]
    assert responses[0].status_code == 202
    response = responses[1]  # 8 events within a second
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "rate_limited"


async def test_cors_allows_only_the_origins_of_the_key(stack: Stack) -> None:
    origin = f"https://www.site-{tag()}.example"
    browser_key = last_line(
        leadstage_cli(
            "keys", "create", "--source", "browser", "--allowed-origin", origin, env=stack.env
        )
    )
    url = f"{stack.ingest.url}/v1/events"
    event = {"type": "page_view", "anonymous_id": f"b-{tag()}", "occurred_at": AT}
    async with httpx.AsyncClient(timeout=10) as http:
        preflight = await http.options(
            url, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        stranger = await http.options(
            url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        allowed = await http.post(
            url, headers={"X-Write-Key": browser_key, "Origin": origin}, json=event
        )
        other_key = await http.post(
            url,
            headers={**stack.write_headers, "Origin": origin},
            json={**event, "anonymous_id": f"b-{tag()}"},
        )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert stranger.status_code == 403
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other_key.headers


async def test_a_browser_can_read_the_error_answers_of_its_origin(stack: Stack) -> None:
    origin = f"https://www.site-{tag()}.example"
    browser_key = last_line(
        leadstage_cli(
            "keys", "create", "--source", "browser", "--allowed-origin", origin, env=stack.env
        )
    )
    url = f"{stack.ingest.url}/v1/events"
    bad_event = {"type": "page_view", "anonymous_id": f"b-{tag()}", "occurred_at": "noon"}
    async with httpx.AsyncClient(timeout=10) as http:
        invalid = await http.post(
            url, headers={"X-Write-Key": browser_key, "Origin": origin}, json=bad_event
        )
        no_key = await http.post(url, headers={"Origin": origin}, json=bad_event)
        segment_invalid = await http.post(
            f"{stack.ingest.url}/v1/track",
            headers={"X-Write-Key": browser_key, "Origin": origin},
            json={"userId": "u"},
        )
        stranger = await http.post(
            url, headers={"X-Write-Key": browser_key, "Origin": "https://evil.example"}, json={}
        )
    assert (invalid.status_code, no_key.status_code, segment_invalid.status_code) == (
        422,
        401,
        422,
    )
    for answer in (invalid, no_key, segment_invalid):
        assert answer.headers["access-control-allow-origin"] == origin
    assert stranger.status_code == 422
    assert "access-control-allow-origin" not in stranger.headers


async def test_metrics_count_outcomes_per_source(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={"type": "page_view", "lead_id": f"m-{tag()}", "occurred_at": AT},
        )
        await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={"type": "page_view", "occurred_at": AT},
        )
        text = (await http.get(f"{stack.ingest.url}/metrics")).text
    assert 'leadstage_ingest_events_total{intake="http",outcome="accepted",source="e2e"}' in text
    assert 'leadstage_ingest_rejected_total{intake="http",kind="schema_violation"}' in text
    assert "leadstage_ingest_produce_seconds_bucket" in text


async def test_batch_limits_are_enforced(stack: Stack) -> None:
    event = {"type": "page_view", "lead_id": "x", "occurred_at": AT}
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(12):
        node["d"] = {}
        node = node["d"]
    async with httpx.AsyncClient(timeout=10) as http:
        too_many = await http.post(
            f"{stack.ingest.url}/v1/events/batch",
            headers=stack.write_headers,
            json={"events": [event] * 501},
        )
        nested = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={**event, "properties": deep},
        )
        future = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={**event, "occurred_at": "2099-01-01T00:00:00Z"},
        )
        nul = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={**event, "properties": {"a": "x\u0000y"}},
        )
    assert too_many.status_code == 413
    assert nested.status_code == 422
    assert nested.json()["error"]["code"] == "limit_exceeded"
    assert future.status_code == 422
    assert future.json()["error"]["code"] == "timestamp_out_of_range"
    assert nul.status_code == 422
    assert nul.json()["error"]["details"][0]["field"] == "properties.a"


async def test_a_duplicate_storm_on_two_ingest_processes_counts_each_event_once(
    stack: Stack, sessions: SessionFactory
) -> None:
    second = start_service("ingest", stack.env, f"{stack.env['LEADSTAGE_TRANSPORT']}-ingest2")
    marker = tag()
    events = [
        {
            "event_id": f"storm-{marker}-{i}",
            "type": "page_view",
            "lead_id": f"storm-{marker}-{i % 7}",
            "occurred_at": AT,
        }
        for i in range(40)
    ]
    try:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:

            async def post(url: str, event: dict[str, Any]) -> str:
                response = await http.post(
                    f"{url}/v1/events", headers=stack.write_headers, json=event
                )
                assert response.status_code == 202, response.text
                return str(response.json()["status"])

            jobs = [
                post(url, e)
                for e in events
                for url in (stack.ingest.url, second.url, stack.ingest.url)
            ]
            statuses = await asyncio.gather(*jobs)
            await wait_for_stage(http, stack, f"storm-{marker}-0", "Awareness")
    finally:
        second.stop()
    assert statuses.count("accepted") == 40
    assert statuses.count("duplicate") == 80
    async with sessions() as session:
        deadline = time.monotonic() + 10
        while True:
            stored = (
                await session.scalars(
                    select(StoredTouchpoint.event_id).where(
                        StoredTouchpoint.event_id.like(f"storm-{marker}-%")
                    )
                )
            ).all()
            if len(stored) >= 40 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert sorted(stored) == sorted(e["event_id"] for e in events)


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
async def test_the_kafka_raw_intake_forwards_valid_records_and_dead_letters_the_rest(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    from leadstage.transport.base import OutgoingRecord

    settings = environment.settings("kafka")
    marker = tag()
    lead = f"raw-{marker}"
    valid_native = {"type": "page_view", "lead_id": lead, "occurred_at": AT}
    valid_segment = {
        "type": "track",
        "event": "Demo Requested",
        "userId": lead,
        "timestamp": "2026-11-20T10:05:00Z",
        "messageId": f"seg-{marker}",
    }
    records = [
        OutgoingRecord(
            key=lead.encode(),
            value=json.dumps(valid_native).encode(),
            headers={"write-key": stack.write_key},
        ),
        OutgoingRecord(
            key=lead.encode(),
            value=f"{{broken {marker}".encode(),
            headers={"write-key": stack.write_key},
        ),
        OutgoingRecord(
            key=lead.encode(),
            value=json.dumps({**valid_native, "m": marker}).encode(),
            headers={"write-key": "lsw_not-a-key"},
        ),
        OutgoingRecord(
            key=lead.encode(),
            value=json.dumps(valid_segment).encode(),
            headers={"write-key": stack.write_key},
        ),
    ]
    await publish_all(settings, sessions, records, topic=settings.raw_touchpoints_topic)
    async with httpx.AsyncClient(timeout=10) as http:
        await wait_for_stage(http, stack, lead, "Action", within=30)
    letters = await dead_letters_matching(environment, stack, sessions, marker, 2)
    assert sorted(letter["error_kind"] for letter in letters) == [
        "json_invalid",
        "unknown_write_key",
    ]
    assert all(letter["source_topic"] == settings.raw_touchpoints_topic for letter in letters)
    assert all(isinstance(letter["source_offset"], int) for letter in letters)


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
async def test_a_replayed_segment_record_is_read_as_of_its_first_receipt(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    from leadstage.transport.base import OutgoingRecord

    marker = tag()
    # First received an hour ago from a client whose clock ran two hours behind; the
    # replay carries that time (dlq.replay_record), as the clock-skew correction needs.
    received = datetime.now(UTC) - timedelta(hours=1)
    sent = received - timedelta(hours=2)
    message = {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"replay-{marker}",
        "messageId": f"replay-{marker}",
        "sentAt": sent.isoformat(),
        "timestamp": (sent - timedelta(seconds=10)).isoformat(),
    }
    record = OutgoingRecord(
        key=b"e2e",
        value=json.dumps(message).encode(),
        headers={"source": "e2e", dlq.RECEIVED_AT_HEADER: received.isoformat()},
    )
    settings = environment.settings("kafka")
    await publish_all(settings, sessions, [record], topic=settings.raw_touchpoints_topic)
    stored = await stored_touchpoint(sessions, f"replay-{marker}")
    assert stored.occurred_at == received - timedelta(seconds=10)


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
async def test_a_raw_segment_record_is_read_as_of_its_time_in_the_log(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    """An intake running behind does not move Segment events by its lag: the clock-skew
    correction counts from the record's time in Kafka, not from its consumption."""
    from aiokafka import AIOKafkaProducer

    marker = tag()
    logged = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sent = logged - timedelta(hours=2)  # the client's clock runs two hours behind
    message = {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"lagged-{marker}",
        "messageId": f"lagged-{marker}",
        "sentAt": sent.isoformat(),
        "timestamp": (sent - timedelta(seconds=10)).isoformat(),
    }
    settings = environment.settings("kafka")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.raw_touchpoints_topic,
            json.dumps(message).encode(),
            key=b"e2e",
            headers=[("write-key", stack.write_key.encode())],
            timestamp_ms=int(logged.timestamp() * 1000),
        )
        await producer.send_and_wait(
            settings.raw_touchpoints_topic,
            f"{{broken {marker}".encode(),
            key=b"e2e",
            headers=[("write-key", stack.write_key.encode())],
            timestamp_ms=int(logged.timestamp() * 1000),
        )
    finally:
        await producer.stop()
    stored = await stored_touchpoint(sessions, f"lagged-{marker}")
    assert stored.occurred_at == logged - timedelta(seconds=10)
    # A refused one keeps that time for its replay, not the (later) time of refusal.
    [letter] = await dead_letters_matching(environment, stack, sessions, marker, 1)
    assert letter["error_kind"] == "json_invalid"
    assert letter["received_at"] == logged.isoformat()


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
async def test_dlq_replay_sends_a_refused_event_back_through_ingest_after_a_fix(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    marker = tag()
    # Refused: more fields than the limit (200).
    event = {
        "event_id": f"wide-{marker}",
        "type": "page_view",
        "lead_id": f"wide-{marker}",
        "occurred_at": AT,
        "properties": {f"p{i}": i for i in range(250)},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events", headers=stack.write_headers, json=event
        )
    assert response.status_code == 422, response.text
    [letter] = await dead_letters_matching(environment, stack, sessions, f"wide-{marker}", 1)
    assert letter["error_kind"] == "limit_exceeded"
    # The fix: an ingest whose limit allows the event, reading the raw topic in a group
    # of its own (the stack's ingest refuses the replayed record again, as it should).
    fixed = start_service(
        "ingest",
        {
            **stack.env,
            "LEADSTAGE_MAX_PROPERTIES": "1000",
            "LEADSTAGE_RAW_INTAKE_GROUP": f"replay-{marker}",
        },
        f"replay-{marker}",
    )
    try:
        output = await asyncio.to_thread(
            leadstage_cli, "dlq", "replay", "--kind", "limit_exceeded", env=stack.env
        )
        assert output.startswith("replayed "), output
        stored = await stored_touchpoint(sessions, f"wide-{marker}")
    finally:
        fixed.stop()
    assert stored.source == "e2e"
    assert stored.occurred_at == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


async def stored_touchpoint(sessions: SessionFactory, event_id: str) -> StoredTouchpoint:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with sessions() as session:
            stored = await session.scalar(
                select(StoredTouchpoint).where(StoredTouchpoint.event_id == event_id)
            )
        if stored is not None:
            return stored
        await asyncio.sleep(0.3)
    raise AssertionError(f"{event_id} was not forwarded and stored")


@pytest.mark.parametrize("stack", ["kafka"], indirect=True)
async def test_a_raw_record_too_large_to_dead_letter_whole_is_cut_and_later_ones_follow(
    stack: Stack, environment: Environment, sessions: SessionFactory
) -> None:
    from leadstage.transport.base import OutgoingRecord

    settings = environment.settings("kafka")
    marker = tag()
    # Just below a produce request's limit (1 MiB): the record is accepted, and its dead
    # letter, with the reason's headers added, would not be unless it is cut.
    huge = f'{{"type": "page_view", "m": "{marker}", "pad": "'.encode()
    huge += b"x" * (1_048_576 - 128 - len(huge) - 2) + b'"}'
    later = f"{{broken later {marker}".encode()
    keyed = {"write-key": stack.write_key}
    await publish_all(  # two requests: the first must not hold up the second
        settings,
        sessions,
        [OutgoingRecord(key=b"", value=huge, headers=keyed)],
        [OutgoingRecord(key=b"", value=later, headers=keyed)],
        topic=settings.raw_touchpoints_topic,
    )
    letters = await dead_letters_matching(environment, stack, sessions, marker, 2)
    by_kind = {letter["error_kind"]: letter for letter in letters}
    assert sorted(by_kind) == ["json_invalid", "size_violation"]
    cut = by_kind["size_violation"]
    assert cut["payload_bytes"] == len(huge)
    assert cut["payload_truncated"] is True
    assert len(cut["payload"]) == dlq.MAX_PAYLOAD_BYTES
    assert huge.startswith(cut["payload"].encode())
    assert by_kind["json_invalid"]["payload"] == later.decode()


async def test_a_batch_refused_whole_is_answered_after_the_key(stack: Stack) -> None:
    marker = tag()
    broken = f'{{"events": [{{"type": "page_view", "m": "{marker}"'.encode()  # cut short
    too_many = json.dumps(
        {"events": [{"type": "page_view", "lead_id": f"{marker}-{i}"} for i in range(501)]}
    ).encode()
    async with httpx.AsyncClient(timeout=10) as http:
        anonymous = [
            await http.post(f"{stack.ingest.url}/v1/events/batch", content=body)
            for body in (broken, too_many)
        ]
        keyed = [
            await http.post(
                f"{stack.ingest.url}/v1/events/batch", content=body, headers=stack.write_headers
            )
            for body in (broken, too_many)
        ]
    assert [r.status_code for r in anonymous] == [401, 401]  # no key: nothing else is said
    assert [r.status_code for r in keyed] == [400, 413]
    assert keyed[1].json()["error"]["details"][0]["field"] == "events"


async def test_dlq_inspect_lists_dead_letters_with_their_reason(stack: Stack) -> None:
    marker = tag()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{stack.ingest.url}/v1/events",
            headers=stack.write_headers,
            json={"type": "page_view", "lead_id": marker, "occurred_at": "not a time"},
        )
    assert response.status_code == 422
    deadline = time.monotonic() + 20
    mine: list[dict[str, Any]] = []
    while not mine and time.monotonic() < deadline:
        output = await asyncio.to_thread(
            leadstage_cli,
            "dlq",
            "inspect",
            "--kind",
            "schema_violation",
            "--limit",
            "100000",
            env=stack.env,
        )
        entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        mine = [e for e in entries if marker in e["payload"]]
    assert mine, "the rejected event is not listed"
    assert mine[0]["field"] == "occurred_at"
    assert mine[0]["source"] == "e2e"
