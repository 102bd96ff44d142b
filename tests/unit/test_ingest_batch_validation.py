"""A batch is validated in one pydantic call; each event's outcome must be what
validating it alone gives: the same touchpoint, or the same kind, field and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from leadstage.events import Touchpoint
from leadstage_ingest.validation import Limits, Rejected, to_touchpoint, to_touchpoints

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def good(n: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{n}",
        "type": "page_view",
        "lead_id": f"lead-{n}",
        "occurred_at": "2026-11-20T10:00:00Z",
        "properties": {"page_url": "https://example.com/pricing"},
    }


def alone(event: object) -> Touchpoint | tuple[str, str | None, str]:
    try:
        return to_touchpoint(event, source="s", received_at=NOW, limits=Limits())
    except Rejected as rejection:
        return (rejection.kind, rejection.field, rejection.message)


def in_batch(events: list[object]) -> list[Touchpoint | tuple[str, str | None, str]]:
    return [
        (o.kind, o.field, o.message) if isinstance(o, Rejected) else o
        for o in to_touchpoints(events, source="s", received_at=NOW, limits=Limits())
    ]


def test_a_clean_batch_gives_the_touchpoints_of_one_by_one_validation() -> None:
    events: list[object] = [good(n) for n in range(5)]
    assert in_batch(events) == [alone(e) for e in events]
    assert [tp.event_id for tp in in_batch(events) if isinstance(tp, Touchpoint)] == [
        f"e-{n}" for n in range(5)
    ]


def test_each_bad_event_is_named_as_if_it_were_validated_alone() -> None:
    events: list[object] = [
        good(0),
        {**good(1), "occurred_at": "2026-11-20T10:00:00"},  # no offset: schema
        "not an object",  # shape, before the schema
        {**good(3), "source": "forged"},  # a field ingest stamps
        good(4),
        {**good(5), "occurred_at": "2030-01-01T00:00:00Z"},  # passes the schema, then time
        {**good(6), "type": "no_such_type", "ocurred_at": "x"},
        {"type": "page_view", "occurred_at": "2026-11-20T10:00:00Z"},  # no identity
    ]
    outcomes = in_batch(events)
    assert outcomes == [alone(e) for e in events]
    assert [isinstance(o, Touchpoint) for o in outcomes] == [
        True, False, False, False, True, False, False, False
    ]  # fmt: skip
    assert outcomes[1][:2] == ("schema_violation", "occurred_at")  # type: ignore[index]
    assert outcomes[2] == ("schema_violation", None, "an event must be a JSON object")
    assert outcomes[3] == ("schema_violation", "source", "Extra inputs are not permitted")
    assert outcomes[5][:2] == ("timestamp_out_of_range", "occurred_at")  # type: ignore[index]


def test_an_event_without_an_id_gets_one_generated() -> None:
    event = good(0)
    del event["event_id"]
    [touchpoint] = in_batch([event])
    assert isinstance(touchpoint, Touchpoint)
    assert len(touchpoint.event_id) == 36
