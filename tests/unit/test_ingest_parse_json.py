"""Ingest reads JSON with orjson, except where orjson would drop an integer's digits."""

from __future__ import annotations

import pytest

from leadstage_ingest.validation import ErrorKind, Rejected, parse_json


@pytest.mark.parametrize(
    "number",
    [2**64, -(2**63) - 1, 123456789012345678901234567890, 2**64 - 1, -(2**63), 42],
)
def test_integers_keep_every_digit(number: int) -> None:
    parsed = parse_json(b'{"properties": {"seats": %d, "id": "abc"}}' % number)

    assert parsed["properties"]["seats"] == number
    assert type(parsed["properties"]["seats"]) is int


def test_a_long_digit_run_inside_a_string_changes_nothing() -> None:
    assert parse_json(b'{"id": "12345678901234567890", "n": 1.5}') == {
        "id": "12345678901234567890",
        "n": 1.5,
    }


@pytest.mark.parametrize(
    "raw", [b'{"n": NaN, "id": 12345678901234567890123}', b'{"s": "\\ud800", "n": 1}', b"{"]
)
def test_invalid_json_is_still_rejected(raw: bytes) -> None:
    with pytest.raises(Rejected) as rejected:
        parse_json(raw)
    assert rejected.value.kind is ErrorKind.JSON_INVALID
