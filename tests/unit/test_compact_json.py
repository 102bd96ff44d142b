"""The hot-path JSON encoder: orjson where it can, the standard library beyond 64 bits."""

from __future__ import annotations

import json

import orjson
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


@pytest.mark.parametrize(
    "document",
    [
        '{"seats": 18446744073709551616, "id": "x"}',
        b'{"delta": -9223372036854775809, "n": 1.5}',
        '{"id": "12345678901234567890123", "n": [1, 2.5, null, true]}',
        b'{"small": 42, "name": "Zo\\u00eb"}',
    ],
)
def test_decodes_what_the_standard_library_decodes(document: str | bytes) -> None:
    assert compact_json.loads(document) == json.loads(document)
    assert compact_json.loads(document) == json.loads(compact_json.dumps(json.loads(document)))


@pytest.mark.parametrize("document", ['{"n": NaN}', b'{"s": "\\ud800"}', "{"])
def test_decoding_stays_strict(document: str | bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        compact_json.loads(document)
