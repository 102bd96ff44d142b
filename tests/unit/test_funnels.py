"""The preset funnels on hand-written journeys, folded the way the engine folds them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadstage.events import Touchpoint, TouchpointIn
from leadstage.funnels import (
    DEFAULT_FUNNEL,
    Change,
    EventView,
    Funnel,
    LeadState,
    StepResult,
    load_presets,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
PRICING = "https://example.com/pricing"
_ids = itertools.count(1)


def ev(
    type_: str,
    at: timedelta = timedelta(0),
    *,
    properties: dict[str, Any] | None = None,
    account: dict[str, Any] | None = None,
    channel: str | None = None,
    utm: dict[str, str] | None = None,
) -> EventView:
    return EventView(
        source="web",
        event_id=f"e{next(_ids)}",
        type=type_,
        occurred_at=T0 + at,
        channel=channel,
        utm=utm or {},
        properties=properties or {},
        account=account or {},
    )


def days(n: float) -> timedelta:
    return timedelta(days=n)


def pricing_view(at: timedelta = timedelta(0)) -> EventView:
    return ev("page_view", at, properties={"page_url": PRICING})


@dataclass
class Fold:
    state: LeadState
    results: list[StepResult]

    @property
    def changes(self) -> list[Change]:
        return [change for result in self.results for change in result.changes]

    @property
    def moves(self) -> list[tuple[str | None, str | None, str | None, str]]:
        return [
            (c.from_stage, c.to_stage, c.transition, c.rule)
            for c in self.changes
            if c.kind == "stage"
        ]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [skip for result in self.results for skip in result.skipped]


def fold(funnel: Funnel, events: Sequence[EventView], state: LeadState | None = None) -> Fold:
    """What the engine does: each event with the lead's earlier events in the window."""
    current = state or LeadState()
    results: list[StepResult] = []
    for i, event in enumerate(events):
        start = event.occurred_at - funnel.history_window
        history = [e for e in events[:i] if e.occurred_at >= start]
        result = funnel.step(current, event, history)
        results.append(result)
        current = result.state
    return Fold(current, results)


@pytest.fixture(scope="module")
def presets() -> dict[str, Funnel]:
    return load_presets()


@pytest.fixture(scope="module")
def b2b(presets: dict[str, Funnel]) -> Funnel:
    return presets["b2b-six-stage"]


def test_the_presets_ship_with_the_package(presets: dict[str, Funnel]) -> None:
    assert sorted(presets) == [
        "aida",
        "b2b-six-stage",
        "buyers-journey",
        "decision-journey",
        "six-stage-loyalty",
    ]
    assert DEFAULT_FUNNEL in presets
    for funnel in presets.values():
        assert funnel.version >= 1
        assert 3 <= len(funnel.stages) <= 10
        assert set(funnel.groups) == set(funnel.stages)
        assert len(funnel.fingerprint) == 64
    assert load_presets()["aida"] is presets["aida"]  # parsed once


# -- b2b-six-stage ---------------------------------------------------------------------------


def test_b2b_linear_journey(b2b: Funnel) -> None:
    journey = fold(
        b2b,
        [
            ev("ad_click"),
            ev("content_download", days(1)),
            ev("demo_requested", days(2)),
            ev("webinar_attended", days(3)),
            ev("meeting_scheduled", days(4)),
            ev("deal_won", days(30)),
        ],
    )
    assert journey.moves == [
        (None, "Awareness", "entered", "first-visit"),
        ("Awareness", "Interest", "advanced", "came-back-for-content"),
        ("Interest", "Action", "advanced", "converted-on-cta"),
        ("Action", "Engagement", "advanced", "nurtured"),
        ("Engagement", "Opportunity", "advanced", "meeting-scheduled"),
        ("Opportunity", "Customer", "advanced", "deal-closed"),
    ]
    assert journey.state.stage == "Customer"
    assert journey.state.stage_entered_at == T0 + days(30)


def test_b2b_keeps_the_walking_skeleton_moves(b2b: Funnel) -> None:
    journey = fold(b2b, [ev("page_view"), ev("demo_requested", timedelta(minutes=7))])
    assert journey.moves == [
        (None, "Awareness", "entered", "first-visit"),
        ("Awareness", "Action", "skipped", "converted-on-cta"),
    ]
    assert journey.state.stage_entered_at == T0 + timedelta(minutes=7)

    resent = fold(b2b, [ev("meeting_scheduled"), ev("deal_won", days(1))])
    assert [move[:3] for move in resent.moves] == [
        (None, "Opportunity", "entered"),
        ("Opportunity", "Customer", "advanced"),
    ]


def test_b2b_refuses_regression(b2b: Funnel) -> None:
    journey = fold(b2b, [ev("meeting_scheduled")])
    for later in ("page_view", "demo_requested", "content_download", "webinar_attended"):
        result = b2b.step(journey.state, ev(later, days(1)), [])
        assert [c for c in result.changes if c.kind == "stage"] == []
        assert result.state.stage == "Opportunity"


def test_b2b_exit_and_reentry(b2b: Funnel) -> None:
    assert b2b.step(LeadState(), ev("deal_lost"), []).changes == ()  # nothing to exit from
    journey = fold(
        b2b,
        [
            ev("page_view"),
            ev("meeting_scheduled", days(1)),
            ev("deal_lost", days(20)),
            ev("demo_requested", days(60)),
        ],
    )
    assert journey.moves[2:] == [
        ("Opportunity", "Lost", "exited", "deal-lost"),
        ("Lost", "Action", "reentered", "converted-on-cta"),
    ]
    churn = fold(b2b, [ev("purchase"), ev("churned", days(300))])
    assert churn.moves[-1] == ("Customer", "Churned", "exited", "customer-churned")


def test_b2b_disqualification_on_a_call_wins_over_the_call_move(b2b: Funnel) -> None:
    journey = fold(
        b2b, [ev("demo_requested"), ev("call", days(1), properties={"outcome": "no_budget"})]
    )
    assert journey.moves[-1] == ("Action", "Disqualified", "exited", "disqualified-on-call")


def test_three_pricing_views_within_14_days_move_to_interest(b2b: Funnel) -> None:
    two = fold(b2b, [pricing_view(), pricing_view(days(3))])
    assert two.moves == [(None, "Awareness", "entered", "first-visit")]

    three = fold(b2b, [pricing_view(), pricing_view(days(3)), pricing_view(days(13))])
    assert three.moves[-1] == ("Awareness", "Interest", "advanced", "pricing-page-interest")

    on_the_boundary = fold(b2b, [pricing_view(), pricing_view(days(1)), pricing_view(days(14))])
    assert on_the_boundary.state.stage == "Interest"

    too_late = fold(b2b, [pricing_view(), pricing_view(timedelta(hours=2)), pricing_view(days(15))])
    assert too_late.state.stage == "Awareness"

    other_pages = [ev("page_view", days(i), properties={"page_url": "/blog"}) for i in range(3)]
    assert fold(b2b, [*other_pages[:2], pricing_view(days(2))]).state.stage == "Awareness"


def test_the_count_ignores_history_outside_its_window_even_if_given(b2b: Funnel) -> None:
    old = [pricing_view(), pricing_view(days(1))]
    state = fold(b2b, old).state
    result = b2b.step(state, pricing_view(days(20)), old)
    assert result.state.stage == "Awareness"
    replayed = b2b.step(state, old[1], old)  # the event itself in history counts once
    assert replayed.state.stage == "Awareness"


def test_scores_decay_with_their_half_life(b2b: Funnel) -> None:
    state = LeadState(scores={"engagement": 40.0, "fit": 30.0}, scores_as_of=T0)
    assert state.score_at(b2b, "engagement", T0 + days(14)) == 20.0
    assert state.score_at(b2b, "engagement", T0 + days(28)) == 10.0
    assert state.score_at(b2b, "engagement", T0 + days(7)) == pytest.approx(28.284271)
    assert state.score_at(b2b, "fit", T0 + days(28)) == 30.0  # fit does not decay
    assert state.score_at(b2b, "engagement", T0 - days(1)) == 40.0  # never grows
    assert LeadState().score_at(b2b, "engagement", T0) == 0.0


def test_decay_is_rebased_and_reported_when_a_score_changes(b2b: Funnel) -> None:
    journey = fold(b2b, [ev("demo_requested"), ev("meeting_scheduled")])  # at the same time
    assert journey.state.scores["engagement"] == 40.0
    assert journey.state.scores_as_of == T0

    later = b2b.step(journey.state, ev("email_opened", days(14)), [])
    assert [(c.rule, c.score, c.delta, c.value) for c in later.changes] == [
        ("decay", "engagement", -20.0, 20.0),
        ("email-opened-points", "engagement", 1.0, 21.0),
    ]
    assert later.state.scores["engagement"] == 21.0
    assert later.state.scores_as_of == T0 + days(14)

    untouched = b2b.step(journey.state, ev("custom:nothing", days(28)), [])
    assert untouched.state is journey.state  # nothing changed, nothing to store
    assert untouched.state.score_at(b2b, "engagement", T0 + days(28)) == 10.0


def test_crossing_the_engagement_threshold_makes_the_lead_sales_ready(b2b: Funnel) -> None:
    journey = fold(
        b2b,
        [
            ev("demo_requested"),  # +25
            ev("meeting_scheduled", timedelta(hours=1)),  # +15 -> 40 (less a little decay)
            ev("webinar_attended", timedelta(hours=2)),  # +12 -> 51.9
            ev("meeting_held", timedelta(hours=3)),  # still above: no second crossing
        ],
    )
    third = journey.results[2].changes
    assert [(c.kind, c.rule) for c in third if c.kind in ("threshold", "sales_ready")] == [
        ("threshold", "threshold:engagement:50"),
        ("sales_ready", "threshold:engagement:50"),
    ]
    assert all(c.kind != "threshold" for c in journey.results[3].changes)
    # Decayed below 50 a week later, a new touch crosses again.
    again = b2b.step(journey.state, ev("meeting_held", days(8)), [])
    assert any(c.kind == "threshold" for c in again.changes)
    assert journey.state.sales_ready
    lost = b2b.step(journey.state, ev("deal_lost", days(4)), [])
    assert lost.state.sales_ready is False
    assert Change(kind="sales_ready", rule="deal-lost", sales_ready=False) in lost.changes


def test_firmographic_fit_is_counted_once_per_field(b2b: Funnel) -> None:
    account = {"domain": "acme.io", "industry": "software", "employee_count": 250, "tier": 1}
    journey = fold(
        b2b,
        [
            ev("page_view", account=account),
            ev("page_view", days(1), account={**account, "country": "DE"}),
            ev("page_view", days(2), account={**account, "tier": 3}),
        ],
    )
    fit = [(c.rule, c.delta) for c in journey.changes if c.score == "fit"]
    assert fit == [
        ("attributes:fit:industry", 10.0),
        ("attributes:fit:employee_count", 15.0),
        ("attributes:fit:tier", 15.0),
        ("attributes:fit:country", 5.0),
    ]
    assert journey.state.scores["fit"] == 45.0


def test_a_high_fit_lead_asking_for_sales_is_sales_ready(b2b: Funnel) -> None:
    account = {"domain": "acme.io", "industry": "fintech", "tier": 1}
    journey = fold(b2b, [ev("page_view", account=account), ev("demo_requested", days(1))])
    assert journey.results[0].state.sales_ready is False
    assert journey.state.sales_ready
    assert (
        Change(kind="sales_ready", rule="high-fit-asks-for-sales", sales_ready=True)
        in journey.results[1].changes
    )


def test_once_only_rules_apply_once(b2b: Funnel) -> None:
    journey = fold(b2b, [ev("newsletter_signup"), ev("newsletter_signup", days(1))])
    points = [c for c in journey.changes if c.rule == "newsletter-signup-points"]
    assert len(points) == 1
    assert "newsletter-signup-points" in journey.state.fired_once
    academic = fold(
        b2b,
        [
            ev("page_view", account={"domain": "cs.uni.edu"}),
            ev("page_view", days(1), account={"domain": "cs.uni.edu"}),
        ],
    )
    assert academic.state.scores["fit"] == -30.0


def test_a_malformed_property_skips_only_the_rules_that_read_it(b2b: Funnel) -> None:
    result = b2b.step(LeadState(), ev("page_view", properties={"page_url": 123}), [])
    assert result.skipped == (
        ("pricing-page-interest", "properties.page_url: regex needs a string, got int"),
        ("pricing-page-points", "properties.page_url: regex needs a string, got int"),
    )
    assert result.state.stage == "Awareness"  # first-visit still applies
    assert result.state.scores["engagement"] == 1.0

    proposal = ev("proposal_sent", properties={"amount": "lots"})
    skipped = b2b.step(result.state, proposal, []).skipped
    assert skipped == (("large-proposal-points", "properties.amount: gte needs a number, got str"),)
    big = ev("proposal_sent", properties={"amount": 120_000})
    assert any(c.rule == "large-proposal-points" for c in b2b.step(result.state, big, []).changes)


def test_a_malformed_history_event_just_does_not_count(b2b: Funnel) -> None:
    broken = ev("page_view", properties={"page_url": ["not", "a", "string"]})
    journey = fold(b2b, [pricing_view(), broken, pricing_view(days(1))])
    assert journey.state.stage == "Awareness"
    assert journey.skipped[0][0] == "pricing-page-interest"


def _journey() -> list[EventView]:
    account = {"domain": "acme.io", "industry": "saas", "employee_count": 80, "country": "NL"}
    return [
        ev("ad_click", channel="paid_search", utm={"source": "google"}, account=account),
        pricing_view(days(1)),
        pricing_view(days(2)),
        pricing_view(days(3)),
        ev("newsletter_signup", days(4)),
        ev("demo_requested", days(9)),
        ev("call", days(12)),
        ev("meeting_held", days(19)),
        ev("proposal_sent", days(26), properties={"amount": 60_000}),
        ev("deal_lost", days(40)),
        ev("demo_requested", days(120)),
    ]


def test_the_same_events_give_the_same_states_and_changes(presets: dict[str, Funnel]) -> None:
    events = _journey()
    for funnel in presets.values():
        first, second = fold(funnel, events), fold(funnel, list(events))
        assert first.results == second.results
        assert json.dumps(first.state.to_dict()) == json.dumps(second.state.to_dict())
        assert repr(first.changes) == repr(second.changes)
    assert fold(presets["b2b-six-stage"], events).state.stage == "Action"


def test_deltas_add_up_to_the_stored_scores(b2b: Funnel) -> None:
    journey = fold(b2b, _journey())
    for name, value in journey.state.scores.items():
        total = sum(
            c.delta or 0.0 for c in journey.changes if c.kind == "score" and c.score == name
        )
        assert total == pytest.approx(value, abs=1e-5)


def test_lead_state_round_trips_through_a_dict(b2b: Funnel) -> None:
    state = fold(b2b, _journey()).state
    assert LeadState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_the_account_stage_follows_the_account_rule(presets: dict[str, Funnel]) -> None:
    b2b = presets["b2b-six-stage"]  # quorum: two contacts at Engagement or beyond
    assert b2b.account_stage([]) is None
    assert b2b.account_stage([None, "Lost"]) is None
    assert b2b.account_stage(["Interest", None, "Lost"]) == "Interest"
    assert b2b.account_stage(["Opportunity", "Awareness"]) == "Action"
    assert b2b.account_stage(["Opportunity", "Engagement"]) == "Opportunity"
    aida = presets["aida"]  # furthest
    assert aida.account_stage(["Interest", "Action"]) == "Action"


def test_the_account_stage_from_counts_and_the_kind_of_an_account_move(
    presets: dict[str, Funnel],
) -> None:
    b2b = presets["b2b-six-stage"]  # stages: Awareness .. Customer; quorum 2 at Engagement
    assert b2b.account_stage_of([0, 0, 0, 0, 0, 1]) == "Action"  # one customer, no quorum
    assert b2b.account_stage_of([3, 0, 0, 1, 0, 1]) == "Customer"  # quorum: Eng + Customer
    assert b2b.account_stage_of([0] * 6) is None
    journey = presets["buyers-journey"]  # quorum 3 at Decision, its last stage
    assert journey.account_stage_of([0, 0, 2]) == "Consideration"
    assert journey.account_stage_of([0, 1, 3]) == "Decision"
    assert [
        b2b.account_move(a, b)
        for a, b in [
            (None, "Action"),
            ("Action", "Engagement"),
            ("Interest", "Opportunity"),
            ("Opportunity", "Action"),
            ("Action", None),
        ]
    ] == ["entered", "advanced", "skipped", "regressed", "exited"]
    loyalty = presets["six-stage-loyalty"]  # loop: Loyalty -> Purchase
    assert loyalty.account_move("Loyalty", "Purchase") == "looped"
    assert loyalty.account_move("Purchase", "Evaluation") == "regressed"


def test_an_event_view_from_a_touchpoint() -> None:
    touchpoint = Touchpoint.accept(
        TouchpointIn.model_validate(
            {
                "type": "page_view",
                "lead_id": "lead-1",
                "occurred_at": "2026-11-20T09:15:00+01:00",
                "account": {"domain": "Example.com", "tier": 1},
                "channel": "paid_search",
                "utm": {"source": "google"},
                "properties": {"page_url": PRICING},
            }
        ),
        source="web",
        received_at=T0,
    )
    view = EventView.from_touchpoint(touchpoint)
    assert (view.type, view.channel, view.source) == ("page_view", "paid_search", "web")
    assert view.account == {"domain": "example.com", "tier": 1}
    assert view.utm == {"source": "google"}
    assert view.event_id == touchpoint.event_id


def test_times_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        EventView(source="s", event_id="e", type="page_view", occurred_at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        LeadState(stage="A", stage_entered_at=datetime(2026, 1, 1))  # noqa: DTZ001


# -- six-stage-loyalty ----------------------------------------------------------------------


def test_six_stage_loyalty_journey_with_a_loyalty_loop(presets: dict[str, Funnel]) -> None:
    funnel = presets["six-stage-loyalty"]
    usage = [ev("custom:product_used", days(31) + timedelta(hours=i)) for i in range(9)]
    journey = fold(
        funnel,
        [
            ev("page_view"),
            ev("page_view", days(2)),
            pricing_view(days(3)),
            ev("demo_requested", days(5)),
            ev("call", days(6)),
            ev("meeting_scheduled", days(7)),
            ev("purchase", days(30)),
            *usage,
            ev("contact_form_submitted", days(60)),
            ev("renewal", days(365)),
        ],
    )
    assert journey.moves == [
        (None, "Awareness", "entered", "first-visit"),
        ("Awareness", "Interest", "advanced", "returning-visitor"),
        ("Interest", "Evaluation", "advanced", "evaluating-proof"),
        ("Evaluation", "Engagement", "advanced", "engaged"),
        ("Engagement", "Purchase", "advanced", "purchased"),
        ("Purchase", "Loyalty", "advanced", "threshold:loyalty:60"),
        ("Loyalty", "Purchase", "looped", "repurchased"),
    ]
    ready = [c for c in journey.changes if c.kind == "sales_ready"]
    assert [(c.rule, c.sales_ready) for c in ready] == [
        ("sales_ready", True),  # Engagement stage with engagement >= 40 (the meeting)
        ("purchased", False),
    ]
    assert journey.results[5].state.sales_ready


def test_six_stage_loyalty_refuses_a_regression(presets: dict[str, Funnel]) -> None:
    funnel = presets["six-stage-loyalty"]
    state = LeadState(stage="Loyalty", stage_entered_at=T0)
    assert funnel.step(state, ev("contact_form_submitted", days(1)), []).state.stage == "Loyalty"
    assert funnel.transition("Loyalty", "Interest") is None
    assert funnel.transition("Purchase", "Interest") is None


# -- aida -----------------------------------------------------------------------------------


def test_aida_linear_skip_and_regression(presets: dict[str, Funnel]) -> None:
    funnel = presets["aida"]
    linear = fold(
        funnel,
        [
            ev("page_view"),
            ev("content_download", days(1)),
            ev("demo_requested", days(2)),
            ev("page_view", days(3)),  # a visit never moves a lead back
            ev("custom:not_now", days(10)),
            ev("trial_started", days(40)),
            ev("purchase", days(50)),
        ],
    )
    assert linear.moves == [
        (None, "Awareness", "entered", "first-visit"),
        ("Awareness", "Interest", "advanced", "interested"),
        ("Interest", "Desire", "advanced", "wants-it"),
        ("Desire", "Interest", "regressed", "cooled-off"),
        ("Interest", "Desire", "advanced", "wants-it"),
        ("Desire", "Action", "advanced", "bought"),
    ]
    skip = fold(funnel, [ev("ad_click"), ev("purchase", days(1))])
    assert skip.moves[-1] == ("Awareness", "Action", "skipped", "bought")


def test_aida_sales_ready_condition(presets: dict[str, Funnel]) -> None:
    funnel = presets["aida"]
    journey = fold(funnel, [ev("page_view"), ev("demo_requested", days(1)), ev("call", days(2))])
    assert journey.results[1].state.sales_ready is False  # Desire, but engagement 22
    journey = fold(funnel, [ev("demo_requested"), ev("webinar_attended", days(1))])
    assert journey.state.sales_ready
    assert journey.results[1].changes[-1] == Change(
        kind="sales_ready", rule="sales_ready", sales_ready=True
    )


# -- buyers-journey -------------------------------------------------------------------------


def test_buyers_journey_threshold_move_and_regression(presets: dict[str, Funnel]) -> None:
    funnel = presets["buyers-journey"]
    journey = fold(
        funnel,
        [
            ev("page_view"),  # +3
            ev("call", days(1)),  # +20
            ev("call", days(2)),  # +20 -> crosses 40
            pricing_view(days(3)),
            pricing_view(days(5)),
            ev("call", days(6), properties={"outcome": "needs_more_research"}),
            ev("deal_lost", days(30)),
        ],
    )
    assert journey.moves == [
        (None, "Awareness", "entered", "problem-identification"),
        ("Awareness", "Consideration", "advanced", "threshold:engagement:40"),
        ("Consideration", "Decision", "advanced", "validation-on-pricing"),
        ("Decision", "Consideration", "regressed", "did-not-fit"),
        ("Consideration", "Lost", "exited", "deal-lost"),
    ]


def test_a_rule_move_beats_a_threshold_move(presets: dict[str, Funnel]) -> None:
    funnel = presets["buyers-journey"]
    state = fold(funnel, [ev("page_view"), ev("call", days(1))]).state  # 23 points
    result = funnel.step(state, ev("demo_requested", days(2)), [])  # +20, and Decision
    assert [(c.kind, c.rule) for c in result.changes if c.kind != "score"] == [
        ("stage", "supplier-selection"),
        ("threshold", "threshold:engagement:40"),
    ]
    assert result.state.stage == "Decision"
    # A threshold never moves a lead back.
    later = fold(funnel, [ev("demo_requested"), ev("call")])  # 40 at the same time
    assert later.state.stage == "Decision"
    assert any(c.rule == "threshold:engagement:40" for c in later.changes)


# -- decision-journey -----------------------------------------------------------------------


def test_decision_journey_bond_and_loop_back_to_buy(presets: dict[str, Funnel]) -> None:
    funnel = presets["decision-journey"]
    usage = [ev("custom:product_used", days(22) + timedelta(hours=i)) for i in range(16)]
    journey = fold(
        funnel,
        [
            ev("page_view"),
            ev("content_download", days(1)),
            ev("deal_won", days(10)),  # loyalty 20
            ev("custom:onboarding_completed", days(20)),
            ev("referral", days(21)),  # loyalty +25
            *usage,  # +3 loyalty each: crosses 80
            ev("renewal", days(380)),
        ],
    )
    assert journey.moves == [
        (None, "Consider", "entered", "considering"),
        ("Consider", "Evaluate", "advanced", "evaluating"),
        ("Evaluate", "Buy", "advanced", "bought"),
        ("Buy", "Enjoy", "advanced", "enjoying"),
        ("Enjoy", "Advocate", "advanced", "advocating"),
        ("Advocate", "Bond", "advanced", "threshold:loyalty:80"),
        ("Bond", "Buy", "looped", "bought-again"),
    ]
    enjoy = LeadState(stage="Enjoy", stage_entered_at=T0)
    upsell = funnel.step(enjoy, ev("upsell", days(1)), []).changes[0]
    assert (upsell.from_stage, upsell.to_stage, upsell.transition) == ("Enjoy", "Buy", "looped")


def test_decision_journey_regression_and_move_kinds(presets: dict[str, Funnel]) -> None:
    funnel = presets["decision-journey"]
    journey = fold(
        funnel,
        [ev("demo_requested"), ev("meeting_held", days(3), properties={"outcome": "not_a_fit"})],
    )
    assert journey.moves[-1] == ("Evaluate", "Consider", "regressed", "reconsidering")
    assert funnel.transition("Advocate", "Buy") == "looped"
    assert funnel.transition("Enjoy", "Evaluate") == "regressed"
    assert funnel.transition("Buy", "Buy") is None
    assert funnel.transition("Consider", "Bond") == "skipped"
    assert funnel.transition("Lost", "Buy") == "reentered"
    assert funnel.transition("Lost", "Churned") == "exited"
    assert funnel.transition(None, "Lost") is None
    assert funnel.transition("Advocate", "Buy", forward_only=True) is None
