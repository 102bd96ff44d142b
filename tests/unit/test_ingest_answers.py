"""Ingest's batch answer is serialised without a model per event: it must be the same
JSON the documented response model gives."""

from __future__ import annotations

import orjson

from leadstage_ingest.intake import batch_result, batch_result_json
from leadstage_ingest.service import EventOutcome


def test_the_batch_answer_is_the_documented_models_json() -> None:
    outcomes = [
        EventOutcome("accepted", event_id="e-1", lead_id="lead-42"),
        EventOutcome("duplicate", event_id="e-0"),
        EventOutcome(
            "rejected", kind="schema_violation", field="occurred_at", reason="no timezone"
        ),
        EventOutcome("rejected", kind="json_invalid", field=None, reason=None),
        EventOutcome("accepted", event_id="é-2 ☃", lead_id="anon:ü"),
    ]
    fast = batch_result_json(outcomes)
    assert fast == batch_result(outcomes).model_dump_json().encode()
    answer = orjson.loads(fast)
    assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == (2, 1, 2)
    assert answer["results"][2] == {
        "index": 2,
        "status": "rejected",
        "event_id": None,
        "lead_id": None,
        "error": {"kind": "schema_violation", "field": "occurred_at", "reason": "no timezone"},
    }
    assert answer["results"][3]["error"] == {"kind": "json_invalid", "field": None, "reason": ""}


def test_an_empty_batch_answers_zero_counts() -> None:
    assert batch_result_json([]) == batch_result([]).model_dump_json().encode()
