"""Ingest's HTTP request and response bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from leadstage.events import TouchpointIn


class EventResult(BaseModel):
    status: Literal["accepted", "duplicate"]
    event_id: str = Field(description="The client's event_id, or the one generated for it.")
    lead_id: str | None = Field(
        default=None, description="The canonical lead the event was attributed to."
    )


class EventError(BaseModel):
    kind: str = Field(description="json_invalid, schema_violation, size_violation, ...")
    field: str | None
    reason: str


class BatchItemResult(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected"]
    event_id: str | None = None
    lead_id: str | None = None
    error: EventError | None = None


class BatchResult(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "accepted": 1,
                    "duplicates": 1,
                    "rejected": 1,
                    "results": [
                        {"index": 0, "status": "accepted", "event_id": "e-1", "lead_id": "lead-42"},
                        {"index": 1, "status": "duplicate", "event_id": "e-0"},
                        {
                            "index": 2,
                            "status": "rejected",
                            "error": {
                                "kind": "schema_violation",
                                "field": "occurred_at",
                                "reason": "Input should have timezone info",
                            },
                        },
                    ],
                }
            ]
        }
    }

    accepted: int
    duplicates: int
    rejected: int
    results: list[BatchItemResult]


class EventBatch(BaseModel):
    """`POST /v1/events/batch`: up to 500 touchpoints (documentation of the body)."""

    events: list[TouchpointIn] = Field(max_length=500)


class SegmentAccepted(BaseModel):
    """Segment's Tracking API answers `{"success": true}`; we add the per-event results."""

    success: bool = True
    results: list[BatchItemResult] = []


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """Document a JSON body that the handler parses itself (to dead-letter what is bad)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
