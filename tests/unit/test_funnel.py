from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leadstage.funnel import B2B_SIX_STAGE, Funnel, Position, Rule, Stage, StageGroup
from leadstage.funnel import TransitionKind as Kind

AT = datetime(2026, 11, 1, tzinfo=UTC)


def at(stage: str) -> Position:
    return Position(stage, AT)


def test_a_first_page_view_enters_awareness() -> None:
    transition = B2B_SIX_STAGE.apply(None, "page_view")
    assert transition is not None
    assert (transition.from_stage, transition.to_stage, transition.kind) == (
        None,
        "Awareness",
        Kind.ENTERED,
    )


def test_the_next_stage_is_an_advance_and_a_jump_is_a_skip() -> None:
    advance = B2B_SIX_STAGE.apply(at("Awareness"), "content_download")
    skip = B2B_SIX_STAGE.apply(at("Awareness"), "demo_requested")
    assert advance is not None
    assert advance.kind is Kind.ADVANCED
    assert skip is not None
    assert (skip.to_stage, skip.kind) == ("Action", Kind.SKIPPED)


def test_an_event_for_an_earlier_stage_does_not_regress_the_default_funnel() -> None:
    assert B2B_SIX_STAGE.apply(at("Opportunity"), "page_view") is None
    assert B2B_SIX_STAGE.apply(at("Action"), "demo_requested") is None


def test_events_without_a_rule_change_nothing() -> None:
    assert B2B_SIX_STAGE.apply(at("Interest"), "email_opened") is None
    assert B2B_SIX_STAGE.apply(None, "custom:anything") is None


def test_exit_and_reentry() -> None:
    lost = B2B_SIX_STAGE.apply(at("Opportunity"), "deal_lost")
    assert lost is not None
    assert (lost.to_stage, lost.kind) == ("Lost", Kind.EXITED)
    back = B2B_SIX_STAGE.apply(at("Lost"), "demo_requested")
    assert back is not None
    assert (back.to_stage, back.kind) == ("Action", Kind.REENTERED)
    assert B2B_SIX_STAGE.apply(None, "deal_lost") is None  # nothing to exit from


def test_a_funnel_that_allows_regression_records_it() -> None:
    funnel = Funnel(
        name="aida",
        version=1,
        stages=tuple(Stage(n, StageGroup.TOFU) for n in ("Awareness", "Interest", "Desire")),
        exits=frozenset(),
        rules=(
            Rule("seen", frozenset({"page_view"}), to_stage="Awareness"),
            Rule("wants", frozenset({"demo_requested"}), to_stage="Desire"),
        ),
        allow_regression=True,
    )
    regression = funnel.apply(at("Desire"), "page_view")
    assert regression is not None
    assert regression.kind is Kind.REGRESSED


@pytest.mark.parametrize(
    ("stages", "rules", "message"),
    [
        (("A", "B"), (), "3 to 10 stages"),
        (("A", "B", "B"), (), "repeat"),
        (("A", "B", "C"), (Rule("r", frozenset({"x"}), to_stage="Z"),), "unknown stage"),
        (("A", "B", "C"), (Rule("r", frozenset({"x"})),), "exactly one"),
        (("A", "B", "C"), (Rule("r", frozenset({"x"}), exit_to="gone"),), "unknown exit"),
    ],
)
def test_invalid_definitions_are_refused(
    stages: tuple[str, ...], rules: tuple[Rule, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Funnel(
            name="bad",
            version=1,
            stages=tuple(Stage(n, StageGroup.TOFU) for n in stages),
            exits=frozenset(),
            rules=rules,
        )
