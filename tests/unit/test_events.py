from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from leadstage.events import Touchpoint, TouchpointIn

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "page_view",
        "occurred_at": "2026-11-23T10:00:00+01:00",
        "lead_id": "lead-1",
    }
    body.update(overrides)
    return body


def errors_of(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        TouchpointIn.model_validate(body)
    return {".".join(map(str, e["loc"])): e["msg"] for e in caught.value.errors()}


def test_a_minimal_event_is_valid_and_gets_an_id_when_accepted() -> None:
    accepted = Touchpoint.accept(
        TouchpointIn.model_validate(event()), source="web", received_at=NOW
    )
    assert len(accepted.event_id) == 36
    assert accepted.source == "web"
    assert accepted.schema_version == 1


def test_the_client_event_id_is_kept() -> None:
    incoming = TouchpointIn.model_validate(event(event_id="abc-1"))
    assert Touchpoint.accept(incoming, source="web", received_at=NOW).event_id == "abc-1"


def test_email_is_trimmed_and_lowercased() -> None:
    incoming = TouchpointIn.model_validate(event(lead_id=None, email="  Ada@Example.COM "))
    assert incoming.email == "ada@example.com"


@pytest.mark.parametrize(
    ("identity", "expected_key"),
    [
        ({"lead_id": "L1", "email": "a@b.co", "anonymous_id": "x"}, "L1"),
        ({"lead_id": None, "email": "a@b.co", "anonymous_id": "x"}, "email:a@b.co"),
        ({"lead_id": None, "anonymous_id": "x"}, "anon:x"),
    ],
)
def test_the_lead_key_prefers_lead_id_then_email_then_anonymous_id(
    identity: dict[str, Any], expected_key: str
) -> None:
    incoming = TouchpointIn.model_validate(event(**identity))
    assert Touchpoint.accept(incoming, source="s", received_at=NOW).lead_key == expected_key


def test_a_record_round_trips() -> None:
    accepted = Touchpoint.accept(
        TouchpointIn.model_validate(
            event(account={"domain": "Example.com", "tier": 1}, properties={"amount": 10})
        ),
        source="crm",
        received_at=NOW,
    )
    assert Touchpoint.from_record(accepted.to_record()) == accepted
    assert accepted.account is not None
    assert accepted.account.domain == "example.com"


def test_custom_types_are_namespaced() -> None:
    assert TouchpointIn.model_validate(event(type="custom:trade_show_scan")).type == (
        "custom:trade_show_scan"
    )
    assert "type" in " ".join(errors_of(event(type="trade_show_scan")))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"occurred_at": "2026-11-23T10:00:00"}, "occurred_at"),  # no offset
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"lead_id": None}, ""),  # no identity at all
        ({"email": "not-an-email"}, "email"),
        ({"event_id": "x" * 256}, "event_id"),
        ({"account": {"industry": "software"}}, "account"),  # neither id nor domain
        ({"account": {"domain": "example.com", "country": "Germany"}}, "account.country"),
        ({"channel": "carrier_pigeon"}, "channel"),
        ({"ocurred_at": "2026-11-23T10:00:00Z"}, "ocurred_at"),  # typo: refused, not dropped
    ],
)
def test_invalid_events_name_the_field(overrides: dict[str, Any], field: str) -> None:
    errors = errors_of(event(**overrides))
    assert any(location.startswith(field) for location in errors), errors
