"""Touchpoint event schema v1: what websites, ad tools and CRMs send.

The wire form is JSON. ``schema_version`` is carried on every stored and
produced record so that a later v2 can be read side by side with v1.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1

EventId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]
# A lead key may carry a kind prefix ("email:", "anon:") before a 255-character id.
LeadKey = Annotated[str, StringConstraints(min_length=1, max_length=262)]
CustomType = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^custom:[a-z0-9_.-]{1,100}$")
]


class TouchpointType(StrEnum):
    """The built-in touchpoint types. Custom types are written ``custom:<name>``."""

    PAGE_VIEW = "page_view"
    AD_CLICK = "ad_click"
    CONTENT_DOWNLOAD = "content_download"
    NEWSLETTER_SIGNUP = "newsletter_signup"
    WEBINAR_REGISTERED = "webinar_registered"
    WEBINAR_ATTENDED = "webinar_attended"
    DEMO_REQUESTED = "demo_requested"
    CALLBACK_REQUESTED = "callback_requested"
    CONTACT_FORM_SUBMITTED = "contact_form_submitted"
    EMAIL_OPENED = "email_opened"
    EMAIL_CLICKED = "email_clicked"
    CALL = "call"
    MEETING_SCHEDULED = "meeting_scheduled"
    MEETING_HELD = "meeting_held"
    TRIAL_STARTED = "trial_started"
    PROPOSAL_SENT = "proposal_sent"
    DEAL_WON = "deal_won"
    DEAL_LOST = "deal_lost"
    PURCHASE = "purchase"
    RENEWAL = "renewal"
    UPSELL = "upsell"
    CHURNED = "churned"
    REFERRAL = "referral"


class Channel(StrEnum):
    PAID_SOCIAL = "paid_social"
    PAID_SEARCH = "paid_search"
    ORGANIC_SEARCH = "organic_search"
    EMAIL = "email"
    SOCIAL = "social"
    EVENTS = "events"
    REFERRAL = "referral"
    DIRECT = "direct"
    OUTBOUND = "outbound"
    OTHER = "other"


class _Strict(BaseModel):
    # Unknown top-level fields are refused rather than silently dropped, so a
    # typo ("ocurred_at") is reported instead of losing the value.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Account(_Strict):
    """The company a contact belongs to. At least ``id`` or ``domain``."""

    id: Identifier | None = None
    domain: (
        Annotated[
            str,
            StringConstraints(
                strip_whitespace=True,
                to_lower=True,
                max_length=253,
                # Checked before lowercasing, so upper case is allowed here.
                pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$",
            ),
        ]
        | None
    ) = None
    name: ShortText | None = None
    industry: ShortText | None = None
    employee_count: int | None = Field(default=None, ge=0, le=10_000_000)
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = Field(
        default=None, description="ISO 3166-1 alpha-2 code, e.g. DE."
    )
    tier: int | None = Field(default=None, ge=1, le=5, description="1 = key account.")

    @model_validator(mode="after")
    def _needs_id_or_domain(self) -> Account:
        if self.id is None and self.domain is None:
            raise ValueError("an account needs an id or a domain")
        return self


class Campaign(_Strict):
    """UTM campaign fields, as in the ``utm_*`` query parameters."""

    source: ShortText | None = None
    medium: ShortText | None = None
    name: ShortText | None = None
    term: ShortText | None = None
    content: ShortText | None = None


class TouchpointIn(_Strict):
    """A touchpoint as a client sends it (schema v1)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "event_id": "7f7c1a52-0f1e-4a43-9d0c-2f4c2f1b9a10",
                    "type": "demo_requested",
                    "occurred_at": "2026-11-20T09:15:00+01:00",
                    "lead_id": "lead-42",
                    "email": "Ada@Example.com",
                    "account": {"domain": "example.com", "industry": "software", "tier": 2},
                    "channel": "paid_search",
                    "utm": {"source": "google", "medium": "cpc", "name": "q4-demo"},
                    "properties": {"page_url": "https://example.com/demo"},
                }
            ]
        },
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: EventId | None = Field(
        default=None,
        description="Idempotency key chosen by the client (UUID or any string up to 255 "
        "characters). Generated when absent.",
    )
    type: TouchpointType | CustomType = Field(
        description="A built-in touchpoint type, or 'custom:<name>'."
    )
    occurred_at: AwareDatetime = Field(description="RFC 3339 time with an offset.")
    lead_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    email: EmailStr | None = None
    account: Account | None = None
    channel: Channel | None = None
    utm: Campaign | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("email", mode="before")
    @classmethod
    def _normalise_email(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _needs_an_identity(self) -> TouchpointIn:
        if self.lead_id is None and self.anonymous_id is None and self.email is None:
            raise ValueError("at least one of lead_id, anonymous_id or email is required")
        return self


class Touchpoint(TouchpointIn):
    """A validated touchpoint as produced to the event log (always has an id)."""

    event_id: EventId
    source: ShortText = Field(description="The write key's source name.")
    received_at: AwareDatetime
    resolved_lead_id: LeadKey | None = Field(
        default=None,
        description="The canonical lead this event belongs to, resolved by ingest's "
        "identity resolution (anonymous visitors joined to known leads, aliases).",
    )

    @property
    def lead_key(self) -> str:
        """The identity this event is attributed to, and its partition key.

        One lead's events share the key, so they stay in order on one partition.
        """
        if self.resolved_lead_id is not None:
            return self.resolved_lead_id
        return self.provisional_lead_key

    @property
    def provisional_lead_key(self) -> str:
        """The lead key from this event's own identifiers, before resolution."""
        if self.lead_id is not None:
            return self.lead_id
        if self.email is not None:
            return f"email:{self.email}"
        assert self.anonymous_id is not None  # noqa: S101 - guaranteed by _needs_an_identity
        return f"anon:{self.anonymous_id}"

    @classmethod
    def accept(cls, event: TouchpointIn, *, source: str, received_at: datetime) -> Touchpoint:
        fields = event.model_dump()
        fields["event_id"] = event.event_id or str(uuid.uuid4())
        return cls(**fields, source=source, received_at=received_at)

    def to_record(self) -> bytes:
        # The serializer's bytes as they are: ``model_dump_json`` would decode them to a
        # str, which ``.encode()`` then copied back (once per produced event).
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

    @classmethod
    def from_record(cls, value: bytes) -> Touchpoint:
        return cls.model_validate_json(value)
