"""Segment Tracking API messages -> touchpoints (leadstage_ingest.segment).

Example payloads are copied from the Segment documentation and say where from:
"Spec: X" is segment.com/docs/connections/spec/x/ and "HTTP API" is
segment.com/docs/connections/sources/catalog/libraries/server/http-api/.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from leadstage.events import Channel, TouchpointType
from leadstage_ingest.segment import (
    DEFAULT_CONFIG,
    DEFAULT_EVENT_TYPES,
    SegmentMappingConfig,
    SegmentMappingError,
    SegmentMessageType,
    body_write_key,
    custom_type_name,
    split_batch,
    to_touchpoint,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


def message(**fields: Any) -> dict[str, Any]:
    """A minimal valid track call, with fields replaced (None removes a field)."""
    body: dict[str, Any] = {"type": "track", "event": "Demo Requested", "userId": "lead-1"}
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def error_of(body: Any, **kwargs: Any) -> SegmentMappingError:
    with pytest.raises(SegmentMappingError) as caught:
        to_touchpoint(body, received_at=kwargs.pop("received_at", NOW), **kwargs)
    return caught.value


# --- one test per message type, on the Spec's own examples ------------------------------

# Spec: Track, "Example" (a message as Segment stored it, after skew correction).
SPEC_TRACK: dict[str, Any] = {
    "anonymousId": "23adfd82-aa0f-45a7-a756-24f2a7a4c895",
    "context": {
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "page": {
            "path": "/academy/",
            "referrer": "",
            "search": "",
            "title": "Analytics Academy",
            "url": "https://segment.com/academy/",
        },
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_0) AppleWebKit/537.36",
        "ip": "108.0.78.21",
    },
    "event": "Course Clicked",
    "integrations": {},
    "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
    "properties": {"title": "Intro to Analytics"},
    "receivedAt": "2015-12-12T19:11:01.266Z",
    "sentAt": "2015-12-12T19:11:01.169Z",
    "timestamp": "2015-12-12T19:11:01.249Z",
    "type": "track",
    "userId": "AiUGstSDIg",
    "originalTimestamp": "2015-12-12T19:11:01.152Z",
}


def test_the_spec_track_example_maps_and_reproduces_segments_own_timestamp() -> None:
    mapped = to_touchpoint(SPEC_TRACK, received_at=iso("2015-12-12T19:11:01.266Z"))
    touchpoint = mapped.touchpoint
    assert mapped.message_type is SegmentMessageType.TRACK
    assert mapped.event == "Course Clicked"
    assert touchpoint.type == "custom:course_clicked"
    assert touchpoint.event_id == "ajs-f8ca1e4de5024d9430b3928bd8ac6b96"
    assert touchpoint.lead_id == "AiUGstSDIg"
    assert touchpoint.anonymous_id == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"
    assert touchpoint.properties == {"title": "Intro to Analytics"}
    assert touchpoint.account is None
    assert touchpoint.utm is None
    # receivedAt - (sentAt - originalTimestamp) = 01.266 - (01.169 - 01.152) = 01.249,
    # which is the "timestamp" Segment itself stored for this example.
    assert touchpoint.occurred_at == iso(SPEC_TRACK["timestamp"])


def test_a_track_call_keeps_revenue_and_maps_order_completed_to_purchase() -> None:
    # HTTP API, "Track" (event renamed from "Item Purchased" to the E-commerce Spec's
    # "Order Completed"); "Item Purchased" itself becomes a custom type.
    body = {
        "userId": "019mr8mf4r",
        "event": "Order Completed",
        "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99, "value": 3},
        "context": {"ip": "24.5.68.47"},
        "timestamp": "2012-12-02T00:30:12.984Z",
        "writeKey": "YOUR_WRITE_KEY",
        "type": "track",
    }
    touchpoint = to_touchpoint(body, received_at=NOW).touchpoint
    assert touchpoint.type == TouchpointType.PURCHASE
    assert touchpoint.properties == {
        "name": "Leap to Conclusions Mat",
        "revenue": 14.99,
        "value": 3,
    }
    # no sentAt: the client's timestamp is taken as it is (a historical import)
    assert touchpoint.occurred_at == iso("2012-12-02T00:30:12.984Z")
    assert "YOUR_WRITE_KEY" not in touchpoint.model_dump_json()

    body["event"] = "Item Purchased"
    assert to_touchpoint(body, received_at=NOW).touchpoint.type == "custom:item_purchased"


def test_the_spec_identify_example_maps_traits_and_email() -> None:
    # Spec: Identify, "Example".
    body = {
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0 (Macintosh)"},
        "integrations": {"All": False, "Mixpanel": True, "Salesforce": True},
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "traits": {
            "name": "Peter Gibbons",
            "email": "Peter@Example.com",  # upper case added, to see it normalised
            "plan": "premium",
            "logins": 5,
            "address": {
                "street": "6th St",
                "city": "San Francisco",
                "state": "CA",
                "postalCode": "94103",
                "country": "USA",
            },
        },
        "type": "identify",
        "userId": "97980cfea0067",
        "version": "1.1",
    }
    mapped = to_touchpoint(body, received_at=iso("2015-02-23T22:28:55.387Z"))
    touchpoint = mapped.touchpoint
    assert mapped.message_type is SegmentMessageType.IDENTIFY
    assert touchpoint.type == "custom:identify"
    assert touchpoint.lead_id == "97980cfea0067"
    assert touchpoint.anonymous_id == "507f191e810c19729de860ea"
    assert touchpoint.email == "peter@example.com"
    assert touchpoint.properties == {"traits": body["traits"]}
    assert mapped.traits == body["traits"]
    assert mapped.group_traits == {}
    # sentAt == timestamp: no time passed on the client, so the event is receivedAt
    assert touchpoint.occurred_at == iso("2015-02-23T22:28:55.387Z")


def test_the_spec_page_example_maps_name_and_properties() -> None:
    # Spec: Page, "Example", plus the context.page analytics.js collects
    # (Spec: Common Fields, "Structure").
    body = {
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {
            "ip": "8.8.8.8",
            "page": {
                "path": "/academy/",
                "referrer": "",
                "search": "",
                "title": "Analytics Academy",
                "url": "https://segment.com/academy/",
            },
        },
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "name": "Home",
        "properties": {"title": "Welcome | Initech", "url": "http://www.example.com"},
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "type": "page",
        "userId": "97980cfea0067",
        "version": "1.1",
    }
    mapped = to_touchpoint(body, received_at=NOW)
    assert mapped.message_type is SegmentMessageType.PAGE
    assert mapped.event == "Home"
    assert mapped.touchpoint.type == TouchpointType.PAGE_VIEW
    # The call's own properties win; context.page fills in what they lack.
    assert mapped.touchpoint.properties == {
        "title": "Welcome | Initech",
        "url": "http://www.example.com",
        "path": "/academy/",
        "referrer": "",
        "search": "",
        "name": "Home",
    }


def test_a_page_category_is_kept() -> None:
    body = message(type="page", event=None, name="Pricing", category="Docs")
    assert to_touchpoint(body, received_at=NOW).touchpoint.properties == {
        "name": "Pricing",
        "category": "Docs",
    }


def test_the_spec_screen_example_is_a_page_view() -> None:
    # Spec: Screen, "Example".
    body = {
        "anonymousId": "3a12eab0-bca7-11e4-8dfc-aa07a5b093db",
        "channel": "mobile",
        "context": {"ip": "8.8.8.8"},
        "integrations": {"All": True, "Mixpanel": False, "Salesforce": False},
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "name": "Home",
        "properties": {"variation": "blue signup button"},
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "type": "screen",
        "userId": "97980cfea0067",
        "version": "1.1",
    }
    mapped = to_touchpoint(body, received_at=NOW)
    assert mapped.message_type is SegmentMessageType.SCREEN
    assert mapped.touchpoint.type == TouchpointType.PAGE_VIEW
    assert mapped.touchpoint.properties == {"variation": "blue signup button", "name": "Home"}
    config = SegmentMappingConfig(screen_type="custom:screen_view")
    assert to_touchpoint(body, received_at=NOW, config=config).touchpoint.type == (
        "custom:screen_view"
    )


# Spec: Group, "Example".
SPEC_GROUP: dict[str, Any] = {
    "anonymousId": "507f191e810c19729de860ea",
    "channel": "browser",
    "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0 (Macintosh)"},
    "integrations": {"All": True, "Mixpanel": False, "Salesforce": False},
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "receivedAt": "2015-02-23T22:28:55.387Z",
    "sentAt": "2015-02-23T22:28:55.111Z",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Initech",
        "industry": "Technology",
        "employees": 329,
        "plan": "enterprise",
        "total billed": 830,
    },
    "type": "group",
    "userId": "97980cfea0067",
    "groupId": "0e8c78ea9d97a7b8185e8632",
    "version": "1.1",
}


def test_the_spec_group_example_becomes_an_account() -> None:
    mapped = to_touchpoint(SPEC_GROUP, received_at=NOW)
    touchpoint = mapped.touchpoint
    assert mapped.message_type is SegmentMessageType.GROUP
    assert touchpoint.type == "custom:group"
    assert mapped.group_id == "0e8c78ea9d97a7b8185e8632"
    assert mapped.group_traits == SPEC_GROUP["traits"]
    assert mapped.traits == {}
    assert touchpoint.properties == {"traits": SPEC_GROUP["traits"]}
    assert touchpoint.account is not None
    assert touchpoint.account.model_dump(exclude_none=True) == {
        "id": "0e8c78ea9d97a7b8185e8632",
        "name": "Initech",
        "industry": "Technology",
        "employee_count": 329,  # "plan": "enterprise" is not a tier
    }


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        # the Spec types "employees" as a string; traits are case-insensitive
        ({"Employees": "1200"}, {"employee_count": 1200}),
        ({"employee_count": 50}, {"employee_count": 50}),
        ({"employees": "51-200"}, {}),
        ({"employees": -3}, {}),
        ({"employees": True}, {}),
        ({"website": "https://www.Initech.com/about"}, {"domain": "initech.com"}),
        ({"website": "initech.co.uk"}, {"domain": "initech.co.uk"}),
        ({"domain": "initech.com", "website": "https://other.example"}, {"domain": "initech.com"}),
        ({"website": "not a website"}, {}),
        ({"website": "http://localhost:8080"}, {}),
        ({"country": "de"}, {"country": "DE"}),
        ({"address": {"city": "Riga", "country": "LV"}}, {"country": "LV"}),
        ({"address": {"country": "USA"}}, {}),
        ({"tier": 1}, {"tier": 1}),
        ({"plan": 3}, {"tier": 3}),
        ({"plan": "3"}, {}),
        ({"tier": 9}, {}),
        ({"industry": "  "}, {}),
    ],
)
def test_group_traits_fill_the_account_when_their_form_fits(
    traits: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = message(type="group", event=None, groupId="g-1", traits=traits)
    mapped = to_touchpoint(body, received_at=NOW)
    assert mapped.touchpoint.account is not None
    assert mapped.touchpoint.account.model_dump(exclude_none=True) == {"id": "g-1", **expected}
    assert mapped.group_traits == traits  # nothing is lost for the caller


def test_a_group_email_is_the_companys_not_the_leads() -> None:
    body = message(
        type="group",
        event=None,
        groupId="g-1",
        traits={"email": "info@initech.com"},
        context={"traits": {"email": "peter@initech.com"}},
    )
    assert to_touchpoint(body, received_at=NOW).touchpoint.email == "peter@initech.com"


def test_the_spec_alias_example_records_the_previous_id() -> None:
    # Spec: Alias, "Examples".
    body = {
        "anonymousId": "507f191e810c19729de860ea",
        "channel": "browser",
        "context": {"ip": "8.8.8.8"},
        "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
        "previousId": "39239-239239-239239-23923",
        "receivedAt": "2015-02-23T22:28:55.387Z",
        "sentAt": "2015-02-23T22:28:55.111Z",
        "timestamp": "2015-02-23T22:28:55.111Z",
        "type": "alias",
        "userId": "507f191e81",
        "version": "1.1",
    }
    mapped = to_touchpoint(body, received_at=NOW)
    assert mapped.message_type is SegmentMessageType.ALIAS
    assert mapped.previous_id == "39239-239239-239239-23923"
    assert mapped.touchpoint.type == "custom:alias"
    assert mapped.touchpoint.lead_id == "507f191e81"
    assert mapped.touchpoint.properties == {"previous_id": "39239-239239-239239-23923"}


def test_identity_message_types_are_configurable() -> None:
    config = SegmentMappingConfig(
        identify_type="custom:identified", group_type="custom:grouped", alias_type="custom:x"
    )
    body = message(type="identify", event=None, traits={"email": "a@b.co"})
    assert to_touchpoint(body, received_at=NOW, config=config).touchpoint.type == (
        "custom:identified"
    )


# --- context: campaign, groupId, traits ----------------------------------------------------


def test_context_campaign_becomes_utm_and_infers_the_channel() -> None:
    # Spec: Common Fields, "Structure": context.campaign.
    campaign = {
        "name": "TPS Innovation Newsletter",
        "source": "Newsletter",
        "medium": "email",
        "term": "tps reports",
        "content": "image link",
    }
    touchpoint = to_touchpoint(message(context={"campaign": campaign}), received_at=NOW).touchpoint
    assert touchpoint.utm is not None
    assert touchpoint.utm.model_dump() == campaign
    assert touchpoint.channel is Channel.EMAIL


@pytest.mark.parametrize(
    ("medium", "channel"),
    [
        ("cpc", Channel.PAID_SEARCH),
        (" PPC ", Channel.PAID_SEARCH),
        ("paid_social", Channel.PAID_SOCIAL),
        ("social", Channel.SOCIAL),
        ("organic", Channel.ORGANIC_SEARCH),
        ("banner", None),
    ],
)
def test_the_channel_comes_from_utm_medium(medium: str, channel: Channel | None) -> None:
    body = message(context={"campaign": {"source": "google", "medium": medium}})
    assert to_touchpoint(body, received_at=NOW).touchpoint.channel == channel


def test_channel_inference_can_be_switched_off() -> None:
    body = message(context={"campaign": {"medium": "cpc"}})
    config = SegmentMappingConfig(channel_by_medium={})
    assert to_touchpoint(body, received_at=NOW, config=config).touchpoint.channel is None


def test_custom_campaign_keys_and_empty_values_are_dropped() -> None:
    body = message(context={"campaign": {"name": "q4", "medium": "", "adgroup": "x"}})
    touchpoint = to_touchpoint(body, received_at=NOW).touchpoint
    assert touchpoint.utm is not None
    assert touchpoint.utm.model_dump(exclude_none=True) == {"name": "q4"}
    assert touchpoint.channel is None


def test_the_b2b_saas_signed_up_example_carries_account_and_email() -> None:
    # Spec: B2B SaaS, "Signed Up" (its "action" key is the docs' API-explorer field).
    body = {
        "userId": "019mr8mf4r",
        "type": "track",
        "event": "Signed Up",
        "properties": {
            "type": "organic",
            "first_name": "Peter",
            "last_name": "Gibbons",
            "email": "pgibbons@initech.com",
            "phone": "410-555-9412",
            "username": "pgibbons",
            "title": "Mr",
        },
        "context": {"groupId": "acct_123"},
    }
    touchpoint = to_touchpoint(body, received_at=NOW).touchpoint
    # signing up for the product is not a newsletter sign-up: no default mapping
    assert touchpoint.type == "custom:signed_up"
    assert touchpoint.email == "pgibbons@initech.com"
    assert touchpoint.account is not None
    assert touchpoint.account.model_dump(exclude_none=True) == {"id": "acct_123"}


def test_the_email_spec_link_clicked_example_takes_the_email_from_context_traits() -> None:
    # Spec: Email Events, "Email Link Clicked" (its example's API-explorer "user_id" is
    # the wire format's "userId").
    body = {
        "userId": "019mr8mf4r",
        "type": "track",
        "event": "Email Link Clicked",
        "context": {"ip": "67.207.109.102", "traits": {"email": "joanna@chotchkies.com"}},
        "properties": {
            "email_id": "18vzF7u3z",
            "email_subject": "First shirt on us!",
            "campaign_id": "123",
            "campaign_name": "New Customer Discount",
            "link_id": "101",
            "link_url": "https://www.buymyshirts.com?promo=NEWCUSTOMER",
        },
    }
    touchpoint = to_touchpoint(body, received_at=NOW).touchpoint
    assert touchpoint.type == TouchpointType.EMAIL_CLICKED
    assert touchpoint.email == "joanna@chotchkies.com"


def test_an_empty_email_is_absent_and_the_next_source_is_used() -> None:
    body = message(context={"traits": {"email": ""}}, properties={"email": "x@y.co"})
    assert to_touchpoint(body, received_at=NOW).touchpoint.email == "x@y.co"


def test_numeric_ids_become_strings_and_blank_ids_are_absent() -> None:
    touchpoint = to_touchpoint(
        message(userId=42, anonymousId="  ", messageId=7), received_at=NOW
    ).touchpoint
    assert (touchpoint.lead_id, touchpoint.anonymous_id, touchpoint.event_id) == ("42", None, "7")


def test_the_input_message_is_not_changed_or_shared() -> None:
    body = copy.deepcopy(SPEC_GROUP)
    mapped = to_touchpoint(body, received_at=NOW)
    assert body == SPEC_GROUP
    mapped.touchpoint.properties["traits"]["name"] = "changed"
    assert body["traits"]["name"] == "Initech"
    assert mapped.group_traits["name"] == "Initech"


# --- event names -----------------------------------------------------------------------------


def test_the_default_table_covers_every_built_in_type() -> None:
    assert set(DEFAULT_EVENT_TYPES.values()) == set(TouchpointType)


@pytest.mark.parametrize(
    "event",
    ["Demo Requested", "demo requested", "DEMO_REQUESTED", "demo-requested", " Demo  Requested "],
)
def test_event_names_are_matched_case_insensitively(event: str) -> None:
    body = message(event=event)
    assert to_touchpoint(body, received_at=NOW).touchpoint.type == TouchpointType.DEMO_REQUESTED


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("Course Clicked", "custom:course_clicked"),
        ("Pricing Page: Plan Toggled (Annual)", "custom:pricing_page_plan_toggled_annual"),
        ("v2.checkout-started", "custom:v2.checkout-started"),
        ("Pieprasīts demo", "custom:pieprasits_demo"),  # Latvian: accents dropped
        ("Straße", "custom:strasse"),
    ],
)
def test_unknown_event_names_become_custom_slugs(event: str, expected: str) -> None:
    assert to_touchpoint(message(event=event), received_at=NOW).touchpoint.type == expected


def test_slugs_of_long_names_are_cut_to_100_characters_and_stay_distinct() -> None:
    first = custom_type_name("x" * 150 + " one")
    second = custom_type_name("x" * 150 + " two")
    assert first != second
    for name in (first, second):
        assert name.startswith("custom:xxxx")
        assert len(name.removeprefix("custom:")) == 100
    touchpoint = to_touchpoint(message(event="x" * 150 + " one"), received_at=NOW).touchpoint
    assert touchpoint.type == first


def test_names_without_a_latin_character_get_a_stable_hashed_slug() -> None:
    # e.g. a Chinese event name "demo requested"
    first = to_touchpoint(message(event="演示请求"), received_at=NOW).touchpoint.type
    assert first.startswith("custom:evt-")
    assert first == custom_type_name("演示请求")
    assert first != custom_type_name("网络研讨会")


def test_the_event_table_can_be_extended() -> None:
    config = SegmentMappingConfig(
        event_types={**DEFAULT_EVENT_TYPES, "Pricing Viewed": "custom:pricing_viewed"}
    )
    assert config.type_for_event("pricing viewed") == "custom:pricing_viewed"
    assert config.type_for_event("Demo Requested") == TouchpointType.DEMO_REQUESTED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event_types": {"Demo Requested": "demo"}},
        {"event_types": {"Demo Requested": "custom:Bad Name"}},
        {"event_types": {"  ": "demo_requested"}},
        {"event_types": {"Demo Requested": "demo_requested", "demo_requested": "call"}},
        {"page_type": "page"},
        {"alias_type": "alias"},
    ],
)
def test_a_config_with_a_bad_type_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"type|mapped twice|not an event name"):
        SegmentMappingConfig(**kwargs)


# --- event time ------------------------------------------------------------------------------


def test_clock_skew_is_corrected_with_received_at() -> None:
    # The device clock is 5 minutes fast: it says it made the call at 10:05:00 and sent
    # it 2 s later at 10:05:02; we received it at 10:00:03 by our clock.
    body = message(timestamp="2026-11-23T10:05:00Z", sentAt="2026-11-23T10:05:02Z")
    received = iso("2026-11-23T10:00:03+00:00")
    touchpoint = to_touchpoint(body, received_at=received).touchpoint
    # 10:00:03 - (10:05:02 - 10:05:00) = 10:00:01
    assert touchpoint.occurred_at == iso("2026-11-23T10:00:01+00:00")


def test_original_timestamp_is_the_client_time_when_both_are_sent() -> None:
    body = message(
        originalTimestamp="2026-11-23T09:00:00Z",
        timestamp="2026-11-23T09:30:00Z",  # an already corrected value: not used
        sentAt="2026-11-23T09:00:10Z",
    )
    touchpoint = to_touchpoint(body, received_at=iso("2026-11-23T10:00:00Z")).touchpoint
    assert touchpoint.occurred_at == iso("2026-11-23T09:59:50Z")


def test_skew_correction_works_across_offsets() -> None:
    # client in UTC+02:00 and 90 s slow; 10 s between the call and sending it
    body = message(timestamp="2026-11-23T11:58:20+02:00", sentAt="2026-11-23T11:58:30+02:00")
    touchpoint = to_touchpoint(body, received_at=iso("2026-11-23T10:00:00Z")).touchpoint
    assert touchpoint.occurred_at == iso("2026-11-23T09:59:50Z")


def test_without_sent_at_the_timestamp_is_used_as_sent() -> None:
    body = message(timestamp="2026-01-05T08:00:00-05:00")
    assert to_touchpoint(body, received_at=NOW).touchpoint.occurred_at == iso(
        "2026-01-05T13:00:00Z"
    )


@pytest.mark.parametrize("sent_at", [None, "2026-11-23T09:00:00Z"])
def test_without_a_timestamp_the_event_time_is_received_at(sent_at: str | None) -> None:
    touchpoint = to_touchpoint(message(sentAt=sent_at), received_at=NOW).touchpoint
    assert touchpoint.occurred_at == NOW


def test_a_message_received_at_is_not_trusted() -> None:
    body = message(timestamp="2026-11-23T09:59:00Z", receivedAt="2001-01-01T00:00:00Z")
    touchpoint = to_touchpoint(body, received_at=NOW).touchpoint
    assert touchpoint.occurred_at == iso("2026-11-23T09:59:00Z")


# --- batches ---------------------------------------------------------------------------------


def test_the_batch_envelope_sent_at_is_used_for_messages_without_one() -> None:
    body = {
        "batch": [
            message(messageId="a", timestamp="2026-11-23T10:04:00Z"),
            message(messageId="b", timestamp="2026-11-23T10:04:00Z", sentAt="2026-11-23T10:04:30Z"),
        ],
        "sentAt": "2026-11-23T10:05:00Z",  # the device clock is 5 minutes fast
        "writeKey": "YOUR_WRITE_KEY",
    }
    messages, sent_at, context = split_batch(body)
    assert sent_at == iso("2026-11-23T10:05:00Z")
    assert context is None
    first, second = (
        to_touchpoint(m, received_at=NOW, batch_sent_at=sent_at).touchpoint for m in messages
    )
    # 10:00:00 - (10:05:00 - 10:04:00) = 09:59:00, with the envelope's sentAt
    assert first.occurred_at == iso("2026-11-23T09:59:00Z")
    # the message's own sentAt wins: 10:00:00 - (10:04:30 - 10:04:00) = 09:59:30
    assert second.occurred_at == iso("2026-11-23T09:59:30Z")


def test_the_batch_context_is_merged_under_the_messages_own() -> None:
    body = {
        "batch": [
            message(context={"campaign": {"name": "own", "medium": "cpc"}}),
            message(),
        ],
        "context": {"campaign": {"name": "batch", "source": "google"}, "groupId": "acct-9"},
    }
    messages, sent_at, context = split_batch(body)
    own, inherited = (
        to_touchpoint(m, received_at=NOW, batch_sent_at=sent_at, batch_context=context).touchpoint
        for m in messages
    )
    assert own.utm is not None
    assert own.utm.model_dump(exclude_none=True) == {
        "name": "own",
        "source": "google",
        "medium": "cpc",
    }
    assert own.channel is Channel.PAID_SEARCH
    assert inherited.utm is not None
    assert inherited.utm.model_dump(exclude_none=True) == {"name": "batch", "source": "google"}
    assert inherited.account is not None
    assert inherited.account.id == "acct-9"


def test_the_http_api_batch_example_maps_except_its_malformed_timestamps() -> None:
    # HTTP API, "Batch": its last two messages carry "2015-2-02T00:30:08.276Z", which is
    # not ISO-8601 (the month needs two digits), so those two are refused.
    body = {
        "batch": [
            {
                "type": "identify",
                "userId": "019mr8mf4r",
                "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
                "timestamp": "2012-12-02T00:30:08.276Z",
            },
            {
                "type": "track",
                "userId": "019mr8mf4r",
                "event": "Song Played",
                "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
                "timestamp": "2012-12-02T00:30:12.984Z",
            },
            {
                "type": "identify",
                "userId": "971mj8mk7p",
                "traits": {"email": "cindy@example.com", "name": "Cindy Gonzalez", "age": 23},
                "timestamp": "2015-2-02T00:30:08.276Z",
            },
            {
                "type": "track",
                "userId": "971mj8mk7p",
                "event": "Song Played",
                "properties": {"name": "Get Right", "artist": "Jennifer Lopez"},
                "timestamp": "2015-2-02T00:30:12.984Z",
            },
        ],
        "writeKey": "YOUR_WRITE_KEY",
        "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}},
    }
    messages, sent_at, context = split_batch(body)
    assert len(messages) == 4
    assert sent_at is None
    assert context == {"device": {"type": "phone", "name": "Apple iPhone 6"}}
    identify, track = (
        to_touchpoint(m, received_at=NOW, batch_context=context).touchpoint for m in messages[:2]
    )
    assert identify.email == "jake@yahoo.com"
    assert identify.occurred_at == iso("2012-12-02T00:30:08.276Z")
    assert track.type == "custom:song_played"
    for bad in messages[2:]:
        assert error_of(bad, batch_context=context).field == "timestamp"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "batch"),
        ({"batch": None}, "batch"),
        ({"batch": {"type": "track"}}, "batch"),
        ({"batch": [message(), "track"]}, "batch.1"),
        ({"batch": [], "sentAt": "yesterday"}, "sentAt"),
        ({"batch": [], "sentAt": "2026-11-23T10:00:00"}, "sentAt"),
        ({"batch": [], "context": ["device"]}, "context"),
    ],
)
def test_a_malformed_batch_body_is_refused_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(SegmentMappingError) as caught:
        split_batch(body)
    assert caught.value.field == field


def test_an_empty_batch_is_fine() -> None:
    assert split_batch({"batch": []}) == ([], None, None)


def test_a_batch_body_must_be_an_object() -> None:
    with pytest.raises(SegmentMappingError) as caught:
        split_batch([message()])  # type: ignore[arg-type]
    assert caught.value.field is None


def test_the_write_key_is_read_from_the_body() -> None:
    assert body_write_key({"writeKey": " YOUR_WRITE_KEY "}) == "YOUR_WRITE_KEY"
    assert body_write_key({"writeKey": ""}) is None
    assert body_write_key({}) is None
    with pytest.raises(SegmentMappingError) as caught:
        body_write_key({"writeKey": 123})
    assert caught.value.field == "writeKey"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (message(type=None), "type", "required"),
        (message(type="screenview"), "type", "not one of"),
        (message(type="Track"), "type", "not one of"),
        (message(userId=None), "userId", "userId or an anonymousId"),
        (message(userId="", anonymousId=" "), "userId", "userId or an anonymousId"),
        (message(userId={"id": 1}), "userId", "must be a string"),
        (message(anonymousId=True), "anonymousId", "must be a string"),
        (message(event=None), "event", "needs an event name"),
        (message(event="  "), "event", "needs an event name"),
        (message(event=12), "event", "must be a string"),
        (message(type="alias", previousId=None), "previousId", "needs a previousId"),
        (
            message(type="alias", userId=None, anonymousId="a", previousId="p"),
            "userId",
            "new userId",
        ),
        (message(type="group"), "groupId", "needs a groupId"),
        (message(type="group", groupId=""), "groupId", "needs a groupId"),
        (message(timestamp="2026-11-23"), "timestamp", "no UTC offset"),
        (message(timestamp="2026-11-23T10:00:00"), "timestamp", "no UTC offset"),
        (message(timestamp="last tuesday"), "timestamp", "not an ISO-8601"),
        (message(timestamp=1700000000), "timestamp", "must be an ISO-8601"),
        (message(originalTimestamp="2026-13-01T00:00:00Z"), "originalTimestamp", "ISO-8601"),
        (message(timestamp="2026-11-23T10:00:00Z", sentAt="now"), "sentAt", "ISO-8601"),
        (message(context="web"), "context", "must be an object"),
        (message(properties=["a"]), "properties", "must be an object"),
        (message(type="identify", traits="x"), "traits", "must be an object"),
        (message(context={"campaign": "q4"}), "context.campaign", "must be an object"),
        (message(context={"campaign": {"term": 5}}), "context.campaign.term", "must be a string"),
        (message(context={"page": "x"}, type="page"), "context.page", "must be an object"),
        (message(context={"traits": []}), "context.traits", "must be an object"),
        (message(context={"groupId": 1.5}), "context.groupId", "must be a string"),
        (message(type="page", name=["Home"]), "name", "must be a string"),
    ],
)
def test_invalid_messages_are_refused_naming_the_segment_field(
    body: dict[str, Any], field: str, reason: str
) -> None:
    error = error_of(body)
    assert error.field == field
    assert reason in error.reason
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (message(type="identify", traits={"email": "not-an-email"}), "traits.email"),
        (message(context={"traits": {"email": "@@"}}), "context.traits.email"),
        (message(properties={"email": 5}), "properties.email"),
        (message(messageId="m" * 256), "messageId"),
        (message(userId="u" * 256), "userId"),
        (message(context={"campaign": {"name": "n" * 256}}), "context.campaign.name"),
        (message(type="group", groupId="g", traits={"Name": "n" * 256}), "traits.Name"),
        (message(type="group", groupId="g", traits={"industry": 7}), "traits.industry"),
        (message(type="group", groupId="g" * 256), "groupId"),
        (message(context={"groupId": "g" * 256}), "context.groupId"),
    ],
)
def test_touchpoint_validation_errors_name_the_segment_field(
    body: dict[str, Any], field: str
) -> None:
    error = error_of(body)
    assert error.field == field
    assert error.__cause__ is not None  # the pydantic error is chained


def test_a_message_must_be_an_object() -> None:
    error = error_of(["track"])
    assert error.field is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"received_at": datetime(2026, 11, 23, 10, 0)},  # noqa: DTZ001 - naive on purpose
        {"received_at": NOW, "batch_sent_at": datetime(2026, 11, 23, 10, 0)},  # noqa: DTZ001
    ],
)
def test_naive_times_from_the_caller_are_a_programming_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_touchpoint(message(), **kwargs)


def test_the_default_config_is_used_by_default() -> None:
    assert DEFAULT_CONFIG.type_for_event("Webinar Registered") == (
        TouchpointType.WEBINAR_REGISTERED
    )
    other_zone = timezone(timedelta(hours=9))
    mapped = to_touchpoint(message(), received_at=NOW.astimezone(other_zone))
    assert mapped.touchpoint.occurred_at == NOW


def test_event_types_can_be_overridden_and_extended() -> None:
    from leadstage_ingest.segment import with_event_types

    config = with_event_types({"demo requested": "call", "Booth Scan": "custom:booth_scan"})
    assert config.type_for_event("Demo Requested") == "call"
    assert config.type_for_event("Booth Scan") == "custom:booth_scan"
    assert config.type_for_event("Webinar Registered") == "webinar_registered"  # default kept
