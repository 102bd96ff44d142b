"""Odd but possible input is answered per event, never with a 500 or a lost batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from leadstage.http import ApiError
from leadstage_ingest import intake, segment
from leadstage_ingest.validation import Limits, Rejected, to_touchpoint, to_touchpoints

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
AHEAD = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)  # a client clock 30 s ahead


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Demo Requested", "userId": "u-1", **fields}


def outcome(candidate: Any) -> tuple[str, str | None] | str:
    if candidate.rejection is not None:
        return (candidate.rejection.kind, candidate.rejection.field)
    return "accepted"


def test_a_time_that_overflows_after_the_skew_correction_is_out_of_range() -> None:
    # .NET's DateTime.MinValue, from a client whose clock runs ahead of the server's.
    message = track(timestamp="0001-01-01T00:00:00Z")
    candidate = intake.segment_candidate(message, "web", NOW, Limits(), batch_sent_at=AHEAD)
    assert outcome(candidate) == ("timestamp_out_of_range", "timestamp")
    good = intake.segment_candidate(track(), "web", NOW, Limits(), batch_sent_at=AHEAD)
    assert outcome(good) == "accepted"


def test_a_huge_numeric_string_trait_is_ignored_not_an_error() -> None:
    message = {
        "type": "group",
        "userId": "u-1",
        "groupId": "acme",
        "traits": {"employees": "1" * 5000},
    }
    candidate = intake.segment_candidate(message, "web", NOW, Limits())
    assert outcome(candidate) == "accepted"
    assert candidate.touchpoint is not None
    assert candidate.touchpoint.account is not None
    assert candidate.touchpoint.account.employee_count is None


def test_a_write_key_that_is_not_a_string_is_a_422_naming_the_field() -> None:
    with pytest.raises(ApiError) as refused:
        intake.body_write_key({"writeKey": 123})
    assert refused.value.status_code == 422
    assert [d.field for d in refused.value.details] == ["writeKey"]


def test_a_batch_message_over_the_event_limit_is_a_size_violation() -> None:
    message = track(properties={"blob": "x" * 200_000})
    candidate = intake.segment_candidate(message, "web", NOW, Limits(), size_known_below=500_000)
    assert outcome(candidate) == ("size_violation", None)


def test_an_events_size_is_its_utf8_size_however_it_arrived() -> None:
    text = "日本語" * 2500  # 22,500 bytes as UTF-8; 45,000 as ASCII-escaped JSON
    event = {
        "type": "page_view",
        "lead_id": "l-1",
        "occurred_at": "2026-11-20T10:00:00Z",
        "properties": {"title": text},
    }
    size = len(json.dumps(event, ensure_ascii=False).encode())
    assert size < Limits().max_event_bytes
    for known_below in (None, size + 10, 500_000):  # alone, or in a large batch body
        touchpoint = to_touchpoint(
            event, source="s", received_at=NOW, limits=Limits(), size_known_below=known_below
        )
        assert touchpoint.properties["title"] == text


def nested(levels: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize("check_nul", [True, False])
def test_the_depth_limit_does_not_depend_on_the_nul_check(check_nul: bool) -> None:
    limits = Limits(max_depth=8)

    def result(properties: dict[str, Any]) -> tuple[str, str | None] | str:
        event = {
            "type": "page_view",
            "lead_id": "l-1",
            "occurred_at": "2026-11-20T10:00:00Z",
            "properties": properties,
        }
        try:
            to_touchpoint(event, source="s", received_at=NOW, limits=limits, check_nul=check_nul)
        except Rejected as rejection:
            return (rejection.kind, rejection.field)
        return "accepted"

    # The event is level 0 and "properties" level 1: eight objects in all put the leaf
    # string at level 9, one past the limit.
    assert result(nested(7)) == "accepted"
    assert result(nested(8)) == ("limit_exceeded", "properties" + ".k" * 8)


def test_an_unexpected_error_rejects_that_message_only(monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = segment.to_touchpoint

    def flaky(message: Any, **kwargs: Any) -> Any:
        if message.get("userId") == "bad":
            raise RuntimeError("a bug on this input")
        return mapping(message, **kwargs)

    monkeypatch.setattr(segment, "to_touchpoint", flaky)
    bad = intake.segment_candidate(track(userId="bad"), "web", NOW, Limits())
    good = intake.segment_candidate(track(), "web", NOW, Limits())
    assert outcome(bad) == ("processing_error", None)
    assert outcome(good) == "accepted"


def test_an_event_nested_a_thousand_levels_is_over_the_depth_limit_in_any_batch() -> None:
    deep: dict[str, Any] = {
        "type": "page_view",
        "lead_id": "l-1",
        "occurred_at": "2026-11-20T10:00:00Z",
        "properties": nested(1000),
    }
    good = {**deep, "properties": {}}
    outcomes = to_touchpoints(
        [deep, good], source="s", received_at=NOW, limits=Limits(), size_known_below=500_000
    )
    assert isinstance(outcomes[0], Rejected)
    assert outcomes[0].kind == "limit_exceeded"
    assert not isinstance(outcomes[1], Rejected)
    message = track(properties=nested(1000))
    candidate = intake.segment_candidate(message, "web", NOW, Limits(), size_known_below=500_000)
    assert outcome(candidate) == ("limit_exceeded", "properties" + ".k" * 8)


@pytest.mark.parametrize("event_id", [0, "", "   ", False, 5])
def test_a_present_but_invalid_event_id_is_refused_not_replaced(event_id: object) -> None:
    event = {
        "event_id": event_id,
        "type": "page_view",
        "lead_id": "l-1",
        "occurred_at": "2026-11-20T11:00:00Z",
    }
    with pytest.raises(Rejected) as refused:
        to_touchpoint(event, source="web", received_at=NOW, limits=Limits())
    assert refused.value.field == "event_id"
    [outcome] = to_touchpoints([event], source="web", received_at=NOW, limits=Limits())
    assert isinstance(outcome, Rejected)
    assert outcome.field == "event_id"


def test_an_absent_or_null_event_id_is_generated() -> None:
    for event in (
        {"type": "page_view", "lead_id": "l-1", "occurred_at": "2026-11-20T11:00:00Z"},
        {
            "event_id": None,
            "type": "page_view",
            "lead_id": "l-1",
            "occurred_at": "2026-11-20T11:00:00Z",
        },
    ):
        touchpoint = to_touchpoint(event, source="web", received_at=NOW, limits=Limits())
        assert len(touchpoint.event_id) == 36  # a UUID
