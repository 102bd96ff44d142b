"""The hot-path JSON encoder: orjson where it can, the standard library beyond 64 bits."""

from __future__ import annotations

import json

import pytest

from leadstage import compact_json


@pytest.mark.parametrize(
    "value",
    [
        {"deal": {"amount": 12_500, "currency": "EUR"}, "name": "Zoë", "tags": ["a", None]},
        {"seats": 2**64, "delta": -(2**63) - 1},
        [123456789012345678901234567890, 1.5, True],
    ],
)
def test_encodes_the_same_json_the_standard_library_reads_back(value: object) -> None:
    encoded = compact_json.dumps(value)

    assert json.loads(encoded) == value
    assert encoded == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def test_a_value_json_cannot_hold_still_fails() -> None:
    with pytest.raises(TypeError):
        compact_json.dumps({"not json": object()})
