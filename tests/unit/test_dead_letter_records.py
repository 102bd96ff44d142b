"""A dead letter keeps the refused record's bytes, and always fits in a produce request."""

from __future__ import annotations

import json

from leadstage import dlq

REASON = {"error_kind": "json_invalid", "field": None, "message": "not JSON", "source": "web"}


def test_a_payload_under_the_limit_is_kept_byte_for_byte_with_its_reason() -> None:
    payload = b"\xff\xfe not json"
    letter = dlq.dead_letter(b"key", payload, REASON)
    assert letter.key == b"key"
    assert letter.value == payload
    assert json.loads(letter.headers["leadstage.dlq"]) == REASON
    assert letter.headers["error_kind"] == "json_invalid"


def test_a_payload_at_the_limit_is_not_cut() -> None:
    payload = b"x" * dlq.MAX_PAYLOAD_BYTES
    letter = dlq.dead_letter(b"", payload, REASON)
    assert letter.value == payload
    assert "payload_truncated" not in json.loads(letter.headers["leadstage.dlq"])


def test_a_larger_payload_is_cut_and_its_reason_says_how_large_it_was() -> None:
    payload = b"y" * (1024 * 1024 - 100)
    letter = dlq.dead_letter(b"key", payload, REASON)
    assert letter.value == payload[: dlq.MAX_PAYLOAD_BYTES]
    reason = json.loads(letter.headers["leadstage.dlq"])
    assert reason == {**REASON, "payload_bytes": len(payload), "payload_truncated": True}
    size = len(letter.key) + len(letter.value) + sum(map(len, letter.headers.values()))
    assert size < 1024 * 1024
