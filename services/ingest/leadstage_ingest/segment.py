"""Segment Tracking API messages -> LeadStage touchpoints (a pure mapping: no I/O).

Lets a website or app that already sends Segment calls (``analytics.js``, the server
libraries, or raw ``POST /v1/{track,identify,page,screen,group,alias,batch}``) feed
LeadStage without re-instrumentation. The rules follow the Segment Spec
(segment.com/docs/connections/spec/: Common Fields, Track, Page, Screen, Identify,
Group, Alias) and the HTTP Tracking API reference
(segment.com/docs/connections/sources/catalog/libraries/server/http-api/).

Field mapping (every message type)
    ``messageId`` -> ``event_id``; ``userId`` -> ``lead_id``; ``anonymousId`` ->
    ``anonymous_id``; ``context.campaign`` {name, source, medium, term, content} ->
    ``utm`` (other custom UTM keys are dropped); ``context.groupId`` -> ``account.id``.
    The e-mail comes from the first of ``traits.email`` (identify only: on a group call
    ``traits`` describe the *group*, and its ``email`` is the company's), then
    ``context.traits.email``, then ``properties.email``.
    ``integrations``, ``writeKey``, ``receivedAt``, ``version`` and the rest of
    ``context`` are not copied. Numeric ids are accepted and turned into strings (the
    Segment libraries do the same); empty ids count as absent.

Per message type
    track    ``event`` -> touchpoint type via ``SegmentMappingConfig.event_types``
             (case-insensitive), else ``custom:<slug>``; ``properties`` as sent
             (so ``revenue``, ``currency`` and ``value`` are kept).
    page     ``config.page_type``; ``properties`` as sent, ``name``/``category`` ->
             ``properties.name``/``properties.category``, and ``context.page``
             {url, path, referrer, title, search} fills the keys ``properties`` lacks.
    screen   ``config.screen_type``; like page, without ``context.page``.
    identify ``config.identify_type``; ``traits`` -> ``properties["traits"]``.
    group    ``config.group_type``; ``groupId`` -> ``account.id``, group traits ->
             ``account`` (see ``_account_from_group``) and ``properties["traits"]``.
    alias    ``config.alias_type``; ``previousId`` -> ``properties["previous_id"]``.
    Identity side-information (previous id, group id and traits, identify traits) is
    returned next to the touchpoint in ``SegmentMapped``.

Event time (Spec: Common Fields, "Timestamps")
    Segment corrects client clock skew as
    ``timestamp = receivedAt - (sentAt - originalTimestamp)``, where
    ``originalTimestamp`` is the client's clock when the call was made, *or the
    ``timestamp`` a caller set by hand*. So the client time is ``originalTimestamp``
    when present, else ``timestamp``; ``sentAt`` is the message's, else the batch
    envelope's; ``receivedAt`` is the caller's ``received_at`` (a ``receivedAt`` inside
    the message is Segment-assigned and ignored). Without ``sentAt`` the client time is
    used as it is (a historical import); without any client time, ``received_at``.
    All timestamps must be ISO-8601 strings *with* an offset. The Spec says Segment's
    timestamps "are ISO-8601 date strings, and are in the UTC timezone", every example
    carries ``Z``, Segment's own libraries attach a zone before sending, and Engage
    discards timestamp traits sent without a timezone; nowhere does it say that a bare
    local time is read as UTC. Guessing would silently shift events by hours, so a
    timestamp without an offset is rejected.

Errors
    Everything wrong with a message raises ``SegmentMappingError`` naming the Segment
    field in dotted form (``"timestamp"``, ``"context.campaign.name"``,
    ``"traits.email"``), including ``TouchpointIn`` validation failures, which are
    translated back from the touchpoint field to the Segment field it came from.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import ValidationError

from leadstage.events import Account, Channel, TouchpointIn, TouchpointType

__all__ = [
    "DEFAULT_CHANNEL_BY_MEDIUM",
    "DEFAULT_CONFIG",
    "DEFAULT_EVENT_TYPES",
    "SegmentMapped",
    "SegmentMappingConfig",
    "SegmentMappingError",
    "SegmentMessageType",
    "SegmentTimeOutOfRangeError",
    "body_write_key",
    "custom_type_name",
    "split_batch",
    "to_touchpoint",
]


class SegmentMappingError(ValueError):
    """A Segment message or batch body that cannot become a touchpoint.

    ``field`` is the offending Segment field in dotted form (``"context.campaign.name"``,
    ``"batch.3"``), or None when the problem is the body as a whole.
    """

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class SegmentTimeOutOfRangeError(SegmentMappingError):
    """A message whose time cannot be represented once corrected for clock skew (such as
    .NET's ``DateTime.MinValue``, year 1, sent by a client whose clock runs ahead)."""


class SegmentMessageType(StrEnum):
    TRACK = "track"
    IDENTIFY = "identify"
    PAGE = "page"
    SCREEN = "screen"
    GROUP = "group"
    ALIAS = "alias"


# Segment-style event names ("Object Action", Spec: Track) for every built-in type.
# Names taken from a Segment semantic-event spec say so; the others follow its naming
# convention. Deliberately absent: "Signed Up" (Spec: B2B SaaS) means signing up for
# the *product*, not a newsletter, so it stays custom:signed_up unless configured.
DEFAULT_EVENT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Page Viewed": TouchpointType.PAGE_VIEW,
        "Ad Clicked": TouchpointType.AD_CLICK,
        "Content Downloaded": TouchpointType.CONTENT_DOWNLOAD,
        "File Downloaded": TouchpointType.CONTENT_DOWNLOAD,
        "Newsletter Subscribed": TouchpointType.NEWSLETTER_SIGNUP,
        "Newsletter Signed Up": TouchpointType.NEWSLETTER_SIGNUP,
        "Webinar Registered": TouchpointType.WEBINAR_REGISTERED,
        "Webinar Attended": TouchpointType.WEBINAR_ATTENDED,
        "Demo Requested": TouchpointType.DEMO_REQUESTED,
        "Callback Requested": TouchpointType.CALLBACK_REQUESTED,
        "Contact Form Submitted": TouchpointType.CONTACT_FORM_SUBMITTED,
        "Email Opened": TouchpointType.EMAIL_OPENED,  # Spec: Email Events
        "Email Link Clicked": TouchpointType.EMAIL_CLICKED,  # Spec: Email Events
        "Email Clicked": TouchpointType.EMAIL_CLICKED,
        "Call Completed": TouchpointType.CALL,
        "Call Logged": TouchpointType.CALL,
        "Meeting Scheduled": TouchpointType.MEETING_SCHEDULED,
        "Meeting Held": TouchpointType.MEETING_HELD,
        "Meeting Completed": TouchpointType.MEETING_HELD,
        "Trial Started": TouchpointType.TRIAL_STARTED,  # Spec: B2B SaaS
        "Proposal Sent": TouchpointType.PROPOSAL_SENT,
        "Deal Won": TouchpointType.DEAL_WON,
        "Deal Lost": TouchpointType.DEAL_LOST,
        "Order Completed": TouchpointType.PURCHASE,  # Spec: E-commerce
        "Subscription Renewed": TouchpointType.RENEWAL,
        "Subscription Upgraded": TouchpointType.UPSELL,
        "Subscription Cancelled": TouchpointType.CHURNED,
        "Customer Churned": TouchpointType.CHURNED,
        "Referral Sent": TouchpointType.REFERRAL,
    }
)

# utm_medium -> channel; deliberately small. Pass channel_by_medium={} to turn it off.
DEFAULT_CHANNEL_BY_MEDIUM: Final[Mapping[str, Channel]] = MappingProxyType(
    {
        "cpc": Channel.PAID_SEARCH,
        "ppc": Channel.PAID_SEARCH,
        "paid_search": Channel.PAID_SEARCH,
        "paidsearch": Channel.PAID_SEARCH,
        "paid_social": Channel.PAID_SOCIAL,
        "paidsocial": Channel.PAID_SOCIAL,
        "email": Channel.EMAIL,
        "social": Channel.SOCIAL,
        "organic": Channel.ORGANIC_SEARCH,
        "referral": Channel.REFERRAL,
    }
)

_BUILT_IN_TYPES: Final = frozenset(t.value for t in TouchpointType)
_CUSTOM_TYPE = re.compile(r"custom:[a-z0-9_.-]{1,100}")
_SLUG_MAX: Final = 100


def _event_key(name: str) -> str:
    """How event names are compared: case-insensitive; spaces, ``_`` and ``-`` alike."""
    return re.sub(r"[\s_-]+", " ", name.casefold()).strip()


def custom_type_name(event: str) -> str:
    """The ``custom:<slug>`` type of an unmapped track event.

    The slug is the name case-folded, with accents removed, and every run of
    characters outside ``[a-z0-9_.-]`` turned into ``_``. A slug longer than 100
    characters is cut and given a hash suffix, so long names sharing a prefix stay
    apart; a name with no usable character at all (``"演示请求"``) becomes
    ``evt-<hash>``, stable for the same name (in any case or spacing).
    """
    digest = hashlib.sha256(_event_key(event).encode()).hexdigest()
    ascii_name = unicodedata.normalize("NFKD", event.casefold()).encode("ascii", "ignore")
    slug = re.sub(r"[^a-z0-9_.-]+", "_", ascii_name.decode()).strip("_")
    if not slug:
        slug = f"evt-{digest[:16]}"
    elif len(slug) > _SLUG_MAX:
        slug = f"{slug[: _SLUG_MAX - 9].rstrip('_')}-{digest[:8]}"
    return f"custom:{slug}"


def _check_type(setting: str, value: str) -> None:
    if value not in _BUILT_IN_TYPES and not _CUSTOM_TYPE.fullmatch(value):
        raise ValueError(f"{setting}: {value!r} is neither a built-in nor a custom:<name> type")


@dataclasses.dataclass(frozen=True)
class SegmentMappingConfig:
    """How Segment messages become touchpoint types (and channels).

    ``event_types`` maps track event names to touchpoint types; keys are matched
    case-insensitively with spaces, ``_`` and ``-`` treated alike ("Demo Requested",
    "demo_requested"). Extend the default with
    ``SegmentMappingConfig(event_types={**DEFAULT_EVENT_TYPES, "Pricing Viewed": ...})``.
    """

    event_types: Mapping[str, str] = dataclasses.field(default_factory=lambda: DEFAULT_EVENT_TYPES)
    page_type: str = TouchpointType.PAGE_VIEW.value
    screen_type: str = TouchpointType.PAGE_VIEW.value
    identify_type: str = "custom:identify"
    group_type: str = "custom:group"
    alias_type: str = "custom:alias"
    channel_by_medium: Mapping[str, Channel] = dataclasses.field(
        default_factory=lambda: DEFAULT_CHANNEL_BY_MEDIUM
    )
    _events: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)
    _channels: Mapping[str, Channel] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        events: dict[str, str] = {}
        for name, touchpoint_type in self.event_types.items():
            key = _event_key(name)
            if not key:
                raise ValueError(f"event_types: {name!r} is not an event name")
            _check_type(f"event_types[{name!r}]", touchpoint_type)
            if events.setdefault(key, touchpoint_type) != touchpoint_type:
                raise ValueError(f"event_types: {name!r} is mapped twice, to different types")
        for setting in ("page_type", "screen_type", "identify_type", "group_type", "alias_type"):
            _check_type(setting, getattr(self, setting))
        channels = {
            medium.strip().casefold(): Channel(c) for medium, c in self.channel_by_medium.items()
        }
        object.__setattr__(self, "_events", MappingProxyType(events))
        object.__setattr__(self, "_channels", MappingProxyType(channels))

    def type_for_event(self, event: str) -> str:
        """The touchpoint type of a track call's ``event`` name."""
        return self._events.get(_event_key(event)) or custom_type_name(event)

    def channel_for_medium(self, medium: str | None) -> Channel | None:
        return None if medium is None else self._channels.get(medium.strip().casefold())


DEFAULT_CONFIG: Final = SegmentMappingConfig()


def with_event_types(overrides: Mapping[str, str]) -> SegmentMappingConfig:
    """The default configuration with some event names mapped differently (or added);
    ``LEADSTAGE_SEGMENT_EVENT_TYPES`` feeds this."""
    replaced = {_event_key(name) for name in overrides}
    kept = {k: v for k, v in DEFAULT_EVENT_TYPES.items() if _event_key(k) not in replaced}
    return SegmentMappingConfig(event_types={**kept, **overrides})


@dataclasses.dataclass(frozen=True)
class SegmentMapped:
    """A mapped Segment message: the touchpoint plus what identity resolution needs."""

    touchpoint: TouchpointIn
    message_type: SegmentMessageType
    event: str | None = None
    """The track ``event`` name, or the page/screen ``name``, exactly as sent."""
    previous_id: str | None = None
    """alias: the ``previousId`` now known as ``touchpoint.lead_id``."""
    group_id: str | None = None
    """group: the ``groupId`` (also ``touchpoint.account.id``)."""
    group_traits: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """group: all traits as sent, including those ``account`` has no field for."""
    traits: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """identify: the user's traits as sent."""


def to_touchpoint(
    message: Mapping[str, Any],
    *,
    received_at: datetime,
    config: SegmentMappingConfig = DEFAULT_CONFIG,
    batch_sent_at: datetime | None = None,
    batch_context: Mapping[str, Any] | None = None,
) -> SegmentMapped:
    """Map one Segment message to a touchpoint (see the module docstring for the rules).

    ``received_at`` is when LeadStage received the request (Segment's ``receivedAt``);
    ``batch_sent_at`` and ``batch_context`` come from a ``/v1/batch`` envelope
    (``split_batch``); the message's own ``context`` wins over the envelope's, key by key.
    Raises ``SegmentMappingError``; a naive ``received_at`` or ``batch_sent_at`` is a
    programming error and raises ``ValueError``.
    """
    _require_aware("received_at", received_at)
    if batch_sent_at is not None:
        _require_aware("batch_sent_at", batch_sent_at)
    if not isinstance(message, Mapping):
        raise SegmentMappingError(None, "a message must be a JSON object")

    message_type = _message_type(message)
    context = _deep_merge(batch_context or {}, _object(message, "context", "context"))
    user_id = _identifier(message, "userId")
    anonymous_id = _identifier(message, "anonymousId")
    if message_type is SegmentMessageType.ALIAS and user_id is None:
        raise SegmentMappingError("userId", "an alias call needs the new userId")
    if user_id is None and anonymous_id is None:
        raise SegmentMappingError("userId", "a message needs a userId or an anonymousId")
    occurred_at, time_field = _event_time(message, received_at, batch_sent_at)

    origins: dict[str, str] = {
        "event_id": "messageId",
        "lead_id": "userId",
        "anonymous_id": "anonymousId",
        "occurred_at": time_field,
        "type": "type",
        "properties": "properties",
    }
    event: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    traits: Mapping[str, Any] = {}
    properties: dict[str, Any]
    account: dict[str, Any] | None = None

    if message_type is SegmentMessageType.TRACK:
        event = _text(message, "event")
        if event is None:
            raise SegmentMappingError("event", "a track call needs an event name")
        touchpoint_type = config.type_for_event(event)
        origins["type"] = "event"
        properties = _copy(_object(message, "properties", "properties"))
    elif message_type in (SegmentMessageType.PAGE, SegmentMessageType.SCREEN):
        event = _text(message, "name")
        is_page = message_type is SegmentMessageType.PAGE
        touchpoint_type = config.page_type if is_page else config.screen_type
        properties = _copy(_object(message, "properties", "properties"))
        if is_page:
            page = _object(context, "page", "context.page")
            for key in ("url", "path", "referrer", "title", "search"):
                if page.get(key) is not None:
                    properties.setdefault(key, copy.deepcopy(page[key]))
            category = _text(message, "category")
            if category is not None:
                properties["category"] = category
        if event is not None:
            properties["name"] = event
    elif message_type is SegmentMessageType.IDENTIFY:
        touchpoint_type = config.identify_type
        traits = _copy(_object(message, "traits", "traits"))
        properties = {"traits": copy.deepcopy(traits)} if traits else {}
    elif message_type is SegmentMessageType.GROUP:
        touchpoint_type = config.group_type
        group_id = _identifier(message, "groupId")
        if group_id is None:
            raise SegmentMappingError("groupId", "a group call needs a groupId")
        traits = _copy(_object(message, "traits", "traits"))
        account = _account_from_group(group_id, traits, origins)
        properties = {"traits": copy.deepcopy(traits)} if traits else {}
    else:
        touchpoint_type = config.alias_type
        previous_id = _identifier(message, "previousId")
        if previous_id is None:
            raise SegmentMappingError("previousId", "an alias call needs a previousId")
        properties = {"previous_id": previous_id}

    context_group_id = _identifier(context, "groupId", "context.groupId")
    if account is None and context_group_id is not None:
        account = {"id": context_group_id}
        origins["account"] = origins["account.id"] = "context.groupId"

    utm = _campaign(context, origins)
    payload: dict[str, Any] = {
        "event_id": _identifier(message, "messageId"),
        "type": touchpoint_type,
        "occurred_at": occurred_at,
        "lead_id": user_id,
        "anonymous_id": anonymous_id,
        "email": _email(message_type, message, context, traits, origins),
        "account": account,
        "channel": config.channel_for_medium(utm.get("medium")),
        "utm": utm or None,
        "properties": properties,
    }
    try:
        touchpoint = TouchpointIn.model_validate(payload)
    except ValidationError as exc:
        raise _translate(exc, origins) from exc

    group = message_type is SegmentMessageType.GROUP
    return SegmentMapped(
        touchpoint=touchpoint,
        message_type=message_type,
        event=event,
        previous_id=previous_id,
        group_id=group_id,
        group_traits=traits if group else {},
        traits=traits if message_type is SegmentMessageType.IDENTIFY else {},
    )


def split_batch(
    body: Mapping[str, Any],
) -> tuple[list[Mapping[str, Any]], datetime | None, Mapping[str, Any] | None]:
    """Take a ``/v1/batch`` body apart: its messages, envelope ``sentAt`` and ``context``.

    Pass the last two to ``to_touchpoint`` as ``batch_sent_at`` and ``batch_context``.
    The body's structure is all-or-nothing (a batch that is not an array, or holds a
    non-object, is refused whole); each message is then mapped, and may fail, on its own.
    """
    if not isinstance(body, Mapping):
        raise SegmentMappingError(None, "a batch body must be a JSON object")
    batch = body.get("batch")
    if batch is None:
        raise SegmentMappingError("batch", "is required")
    if not isinstance(batch, list):
        raise SegmentMappingError("batch", "must be an array of messages")
    for index, item in enumerate(batch):
        if not isinstance(item, Mapping):
            raise SegmentMappingError(f"batch.{index}", "must be a JSON object")
    sent_at = _parse_time(body.get("sentAt"), "sentAt")
    context = body.get("context")
    if context is not None and not isinstance(context, Mapping):
        raise SegmentMappingError("context", "must be an object")
    return list(batch), sent_at, context


def standalone(
    message: Mapping[str, Any],
    batch_sent_at: datetime | None,
    batch_context: Mapping[str, Any] | None,
) -> Mapping[str, Any]:
    """A ``/v1/batch`` message as it would be sent alone, with the envelope's ``sentAt``
    (unless it has its own) and ``context`` (under its own, as ``to_touchpoint`` merges
    them) folded in. A dead letter keeps this form, so that a replay reads the message
    as its batch did: the same clock-skew correction, the same campaign and group."""
    if batch_sent_at is None and not batch_context:
        return message
    alone = dict(message)
    if batch_sent_at is not None and alone.get("sentAt") is None:
        alone["sentAt"] = batch_sent_at.isoformat()
    own = alone.get("context")
    if batch_context and (own is None or isinstance(own, Mapping)):
        alone["context"] = _deep_merge(batch_context, own or {})
    return alone


def body_write_key(body: Mapping[str, Any]) -> str | None:
    """The ``writeKey`` a request body carries (HTTP API "writeKey authentication")."""
    value = body.get("writeKey")
    if value is None:
        return None
    if not isinstance(value, str):
        raise SegmentMappingError("writeKey", "must be a string")
    return value.strip() or None


# --- reading Segment fields --------------------------------------------------------


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _message_type(message: Mapping[str, Any]) -> SegmentMessageType:
    raw = message.get("type")
    if raw is None:
        raise SegmentMappingError("type", "is required")
    try:
        return SegmentMessageType(raw)
    except ValueError:
        known = ", ".join(t.value for t in SegmentMessageType)
        raise SegmentMappingError("type", f"{raw!r} is not one of {known}") from None


def _object(container: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SegmentMappingError(path, "must be an object")
    return value


def _copy(value: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(value))


def _identifier(container: Mapping[str, Any], key: str, path: str | None = None) -> str | None:
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SegmentMappingError(path or key, "must be a string")
    return str(value).strip() or None


def _text(container: Mapping[str, Any], key: str) -> str | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SegmentMappingError(key, "must be a string")
    return value.strip() or None


def _parse_time(value: object, path: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SegmentMappingError(path, "must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SegmentMappingError(path, f"{value[:64]!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise SegmentMappingError(path, "has no UTC offset (send e.g. 'Z' or '+01:00')")
    return parsed


def _event_time(
    message: Mapping[str, Any], received_at: datetime, batch_sent_at: datetime | None
) -> tuple[datetime, str]:
    """``receivedAt - (sentAt - originalTimestamp)``, and the field the time came from."""
    field = "originalTimestamp" if message.get("originalTimestamp") is not None else "timestamp"
    client_time = _parse_time(message.get(field), field)
    sent_at = _parse_time(message.get("sentAt"), "sentAt") or batch_sent_at
    if client_time is None:
        return received_at, "timestamp"
    if sent_at is None:
        return client_time, field
    try:
        return received_at - (sent_at - client_time), field
    except OverflowError:
        raise SegmentTimeOutOfRangeError(field, "is out of range") from None


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def _campaign(context: Mapping[str, Any], origins: dict[str, str]) -> dict[str, str]:
    campaign = _object(context, "campaign", "context.campaign")
    utm: dict[str, str] = {}
    for key in ("source", "medium", "name", "term", "content"):
        path = f"context.campaign.{key}"
        value = campaign.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise SegmentMappingError(path, "must be a string")
        if value.strip():
            utm[key] = value
            origins[f"utm.{key}"] = path
    origins["utm"] = origins["channel"] = "context.campaign"
    return utm


def _email(
    message_type: SegmentMessageType,
    message: Mapping[str, Any],
    context: Mapping[str, Any],
    traits: Mapping[str, Any],
    origins: dict[str, str],
) -> object:
    candidates: list[tuple[str, Mapping[str, Any]]] = []
    if message_type is SegmentMessageType.IDENTIFY:
        candidates.append(("traits", traits))
    candidates.append(("context.traits", _object(context, "traits", "context.traits")))
    candidates.append(("properties", _object(message, "properties", "properties")))
    for path, source in candidates:
        value = source.get("email")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        origins["email"] = f"{path}.email"
        return value  # TouchpointIn normalises and validates it
    return None


# --- group traits -> account ---------------------------------------------------------


def _trait_key(name: str) -> str:
    # Spec: Group, "Traits are case-insensitive" (createdAt == created_at).
    return re.sub(r"[\s_-]", "", name.casefold())


def _find_trait(traits: Mapping[str, Any], *names: str) -> tuple[str, Any] | None:
    wanted = [_trait_key(n) for n in names]
    by_key = {_trait_key(k): k for k in traits if isinstance(k, str)}
    for key in wanted:
        if key in by_key and traits[by_key[key]] is not None:
            return by_key[key], traits[by_key[key]]
    return None


def _account_from_group(
    group_id: str, traits: Mapping[str, Any], origins: dict[str, str]
) -> dict[str, Any]:
    """``groupId`` and the group's reserved traits (Spec: Group, "Traits") as an account.

    ``name`` and ``industry`` are taken as sent (and validated). Values whose *form*
    cannot be an account attribute are left out rather than failing the message; they
    stay in ``SegmentMapped.group_traits``: ``employees`` (or ``employee_count``) that is
    not a whole number 0-10,000,000 (the Spec types it as a string, "329" is fine);
    ``country`` (or ``address.country``) that is not a two-letter code; ``domain`` (or
    ``website``) whose host is not a domain name (``www.`` is dropped); and ``tier``
    (or ``plan``) unless an integer 1-5 ("enterprise" is ignored).
    """
    account: dict[str, Any] = {"id": group_id}
    origins["account"] = origins["account.id"] = "groupId"

    def put(attribute: str, trait: str, value: object) -> None:
        account[attribute] = value
        origins[f"account.{attribute}"] = f"traits.{trait}"

    for attribute in ("name", "industry"):
        found = _find_trait(traits, attribute)
        if found is not None and not (isinstance(found[1], str) and not found[1].strip()):
            put(attribute, *found)
    found = _find_trait(traits, "employees", "employee_count")
    if found is not None and (count := _whole_number(found[1])) is not None:
        put("employee_count", found[0], count)
    found = _find_trait(traits, "domain", "website")
    if found is not None and isinstance(found[1], str) and (host := _domain(found[1])):
        put("domain", found[0], host)
    found = _find_trait(traits, "country")
    address = _find_trait(traits, "address")
    if found is None and address is not None and isinstance(address[1], Mapping):
        nested = _find_trait(address[1], "country")
        found = None if nested is None else (f"{address[0]}.{nested[0]}", nested[1])
    if found is not None and isinstance(found[1], str):
        code = found[1].strip()
        if len(code) == 2 and code.isascii() and code.isalpha():
            put("country", found[0], code.upper())
    for name in ("tier", "plan"):
        found = _find_trait(traits, name)
        if found is not None and type(found[1]) is int and 1 <= found[1] <= 5:  # not bool
            put("tier", *found)
            break
    return account


def _whole_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and 0 < len(value.strip()) <= 8 and value.strip().isdecimal():
        # At most 8 digits (the largest count kept is 10,000,000): int() of a longer
        # string is wasted work, and past 4,300 digits Python refuses it with an error.
        number = int(value.strip())
    else:
        return None
    return number if 0 <= number <= 10_000_000 else None


def _domain(website: str) -> str | None:
    text = website.strip()
    if not text:
        return None
    try:
        host = urlsplit(text if "://" in text else f"//{text}").hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.rstrip(".").removeprefix("www.")
    try:
        Account(domain=host)  # the touchpoint schema's own rule for a domain
    except ValidationError:
        return None
    return host


# --- errors ------------------------------------------------------------------------------


def _translate(exc: ValidationError, origins: Mapping[str, str]) -> SegmentMappingError:
    """A TouchpointIn error, re-addressed to the Segment field the value came from."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    field: str | None = ".".join(loc) or None
    for end in range(len(loc), 0, -1):
        prefix = ".".join(loc[:end])
        if prefix in origins:
            field = origins[prefix]
            break
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return SegmentMappingError(field, f"{first['msg']}{more}")
