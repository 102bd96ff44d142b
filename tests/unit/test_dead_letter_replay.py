"""A replayed dead letter is read as it was on arrival: same receive time, and a
``/v1/batch`` message with its envelope's ``sentAt`` and ``context``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadstage import dlq
from leadstage.transport.base import Record
from leadstage_ingest import intake, segment
from leadstage_ingest.raw_intake import received_at_of
from leadstage_ingest.service import Candidate
from leadstage_ingest.validation import Limits

RECEIVED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SENT = RECEIVED - timedelta(hours=2)  # the client's clock is two hours behind
NOW = RECEIVED + timedelta(days=3)  # the replay


def letter(**reason: Any) -> Record:
    fields = {
        "error_kind": "schema_violation",
        "rejected_by": "ingest",
        "source": "web",
        "received_at": RECEIVED.isoformat(),
        # A raw record consumed an hour after it was produced: refused then.
        "rejected_at": (RECEIVED + timedelta(hours=1)).isoformat(),
        **reason,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    return Record(
        topic="dlq",
        partition=1,
        offset=7,
        key=b"web",
        value=b"{}",
        headers={"leadstage.dlq": json.dumps(fields)},
    )


def test_a_replayed_record_carries_its_source_and_first_receive_time() -> None:
    again = dlq.replay_record(letter())
    assert again is not None
    assert again.value == b"{}"
    assert again.headers == {
        "leadstage.replayed-from": "1:7",
        "source": "web",
        dlq.RECEIVED_AT_HEADER: RECEIVED.isoformat(),
    }
    raw = Record("raw", 0, 0, None, again.value, again.headers)
    assert received_at_of(raw, now=NOW) == RECEIVED


def test_a_dead_letter_of_before_received_at_replays_as_of_its_rejection() -> None:
    again = dlq.replay_record(letter(received_at=None))
    assert again is not None
    assert again.headers[dlq.RECEIVED_AT_HEADER] == (RECEIVED + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    "reason",
    [{"rejected_by": "stage-engine"}, {"error_kind": "json_invalid"}, {"payload_truncated": True}],
)
def test_other_dead_letters_are_not_replayed(reason: dict[str, Any]) -> None:
    assert dlq.replay_record(letter(**reason), kind="schema_violation") is None


@pytest.mark.parametrize(
    "header", [None, "yesterday", "2026-11-20T12:00:00", (NOW + timedelta(seconds=1)).isoformat()]
)
def test_a_missing_or_unusable_receive_time_is_now(header: str | None) -> None:
    headers = {} if header is None else {dlq.RECEIVED_AT_HEADER: header}
    assert received_at_of(Record("raw", 0, 0, None, b"{}", headers), now=NOW) == NOW


def test_a_record_not_replayed_was_received_at_its_time_in_the_log() -> None:
    logged = int((NOW - timedelta(minutes=5)).timestamp() * 1000)
    record = Record("raw", 0, 0, None, b"{}", {}, timestamp_ms=logged)
    assert received_at_of(record, now=NOW) == NOW - timedelta(minutes=5)
    # A replay's header says when it first arrived, before its new time in the log.
    replayed = Record(
        "raw", 0, 0, None, b"{}", {dlq.RECEIVED_AT_HEADER: RECEIVED.isoformat()}, logged
    )
    assert received_at_of(replayed, now=NOW) == RECEIVED


@pytest.mark.parametrize(
    "timestamp_ms", [None, -1, int((NOW + timedelta(seconds=1)).timestamp() * 1000), 2**62]
)
def test_an_unusable_log_time_is_now(timestamp_ms: int | None) -> None:
    record = Record("raw", 0, 0, None, b"{}", {}, timestamp_ms=timestamp_ms)
    assert received_at_of(record, now=NOW) == NOW


def message(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": "u-1",
        "messageId": "m-1",
        "timestamp": (SENT - timedelta(seconds=10)).isoformat(),
        **fields,
    }


ENVELOPE_CONTEXT = {"campaign": {"name": "spring", "source": "google"}, "groupId": "acme"}


def batch_candidate(item: dict[str, Any], received_at: datetime = RECEIVED) -> Candidate:
    return intake.segment_candidate(
        item,
        "web",
        received_at,
        Limits(),
        batch_sent_at=SENT,
        batch_context=ENVELOPE_CONTEXT,
    )


def test_a_rejected_batch_message_keeps_the_envelopes_sent_at_and_context() -> None:
    refused = batch_candidate(message(event=None, context={"campaign": {"name": "own"}}))
    assert refused.rejection is not None
    assert refused.raw["sentAt"] == SENT.isoformat()
    # Merged as the mapping merges them: the message's own values win.
    assert refused.raw["context"] == {
        "campaign": {"name": "own", "source": "google"},
        "groupId": "acme",
    }
    own_clock = batch_candidate(message(event=None, sentAt="2026-11-20T11:00:00Z"))
    assert own_clock.raw["sentAt"] == "2026-11-20T11:00:00Z"


def test_the_kept_message_alone_at_its_receive_time_reads_as_it_did_in_its_batch() -> None:
    in_batch = batch_candidate(message())
    assert in_batch.touchpoint is not None
    alone = intake.segment_candidate(
        dict(segment.standalone(message(), SENT, ENVELOPE_CONTEXT)), "web", RECEIVED, Limits()
    )
    assert alone.touchpoint is not None
    assert alone.touchpoint.occurred_at == in_batch.touchpoint.occurred_at
    assert alone.touchpoint.occurred_at == RECEIVED - timedelta(seconds=10)  # skew corrected
    assert alone.touchpoint.utm == in_batch.touchpoint.utm
    assert alone.touchpoint.account == in_batch.touchpoint.account
