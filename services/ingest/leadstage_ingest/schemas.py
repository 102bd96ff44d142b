"""Ingest's HTTP responses (the request body is leadstage.events.TouchpointIn)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EventAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    event_id: str = Field(description="The client's event_id, or the one generated for it.")
    lead_key: str = Field(description="The identity the event is attributed to.")
