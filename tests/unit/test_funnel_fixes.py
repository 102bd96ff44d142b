"""Regressions found in review: definition files that escaped FunnelDefinitionError (and
the SIGHUP reload they could stop), a threshold move lost for good, non-finite numbers,
and preset rules (aida, b2b-six-stage) that put leads where they should not be."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from leadstage.funnels import (
    EventView,
    Funnel,
    FunnelDefinitionError,
    LeadState,
    StepResult,
    load_funnels,
    load_presets,
    parse_funnel,
)
from leadstage.settings import EngineSettings
from leadstage_engine.reload import LiveFunnels
from tests.unit.test_funnels import T0, Fold
from tests.unit.test_funnels import ev as funnel_event
from tests.unit.test_funnels import fold as fold_events


def ev(type_: str, day: float = 0, **fields: Any) -> EventView:
    return funnel_event(type_, timedelta(days=day), **fields)


def fold(funnel: Funnel, events: Sequence[EventView]) -> list[StepResult]:
    """Each event's step, as the engine folds them (``test_funnels.fold``)."""
    return fold_events(funnel, events).results


def moves(results: Sequence[StepResult]) -> list[tuple[str | None, str | None, str | None, str]]:
    return Fold(LeadState(), list(results)).moves


# -- 1. every error loading a file is a FunnelDefinitionError naming the file -----------------


def definition_error(text: str, file: str) -> FunnelDefinitionError:
    """The error parsing ``text`` raises, which must be a FunnelDefinitionError.

    Any other error fails the test with its type only: pytest would take minutes (and
    gigabytes) to format the traceback of a RecursionError."""
    escaped = "no error"
    try:
        parse_funnel(text, file)
    except FunnelDefinitionError as err:
        return err
    except Exception as err:  # noqa: BLE001 - what the fix is about
        escaped = f"{type(err).__name__} escaped: {str(err)[:200]}"
    pytest.fail(escaped, pytrace=False)


TINY = """\
name: tiny
version: 1
stages:
  - {name: Seen, group: tofu}
  - {name: Keen, group: mofu}
  - {name: Won, group: bofu}
rules:
  - name: seen
    priority: 10
    when: {type: page_view}
    then: {move_to: Seen}
"""


def test_an_unknown_yaml_tag_names_the_file_and_line(tmp_path: Path) -> None:
    """The reviewer's file: ``!regex`` is no YAML tag a funnel file knows."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        TINY.replace("{type: page_view}", "{properties: {page_url: !regex '/pricing'}}"),
        encoding="utf-8",
    )
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnels(tmp_path)
    err = caught.value
    assert (err.file, err.line, err.field) == (str(path), 10, "(yaml)")
    assert "'!regex'" in err.message
    assert str(err).startswith(f"{path}:10: (yaml): ")


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        ("version: 1", "version: !!int abc", 2, "(yaml)", "'abc' is not a valid !!int"),
        ("priority: 10", "priority: !!float ten", 9, "(yaml)", "'ten' is not a valid !!float"),
        ("priority: 10", "priority: !!bool maybe", 9, "(yaml)", "'maybe' is not a valid !!bool"),
        ("version: 1", "version: !!timestamp abc", 2, "(yaml)", "not a valid !!timestamp"),
        ("version: 1", "version: !!python/name:os.system ''", 2, "(yaml)", "python/name"),
        (
            "{type: page_view}",
            "{properties: {? [a, b] : 1}}",
            10,
            "rules.0.when.properties",
            "a key must be a single value",
        ),
        (
            "{move_to: Seen}",
            "&then {move_to: Seen, again: *then}",
            11,
            "rules.0.then.again",
            "recursive alias",
        ),
        (
            "{type: page_view}",
            "{properties: {url: {regex: 'a{4294967296}'}}}",
            10,
            "rules.0.when.properties.url.regex",
            "invalid regular expression",
        ),
    ],
)
def test_yaml_values_that_cannot_be_built_are_located(
    old: str, new: str, line: int, field: str, message: str
) -> None:
    assert old in TINY
    err = definition_error(TINY.replace(old, new, 1), "x.yaml")
    assert (err.file, err.line, err.field) == ("x.yaml", line, field), str(err)
    assert message in err.message, str(err)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("&a [*a]\n", 1, "recursive alias"),
        ("[" * 1000 + "]" * 1000, None, "nested too deeply"),
    ],
)
def test_recursive_or_too_deep_yaml_is_a_definition_error(
    text: str, line: int | None, message: str
) -> None:
    err = definition_error(text, "deep.yaml")
    assert (err.file, err.line) == ("deep.yaml", line)
    assert message in err.message


def test_aliases_are_read_once_not_once_per_use() -> None:
    """Aliases of aliases expand exponentially (here to a million values): finding the
    lines of the file must not walk each expansion (a second before, a millisecond now)."""
    text = TINY + "description:\n  - &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 6):
        text += f"  - &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]\n"
    started = time.perf_counter()
    err = definition_error(text, "laughs.yaml")
    assert time.perf_counter() - started < 0.3
    assert (err.line, err.field) == (12, "description")


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(TINY.replace("tiny", "caf\xe9").encode("latin-1"))
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnels(tmp_path)
    assert (caught.value.file, caught.value.field) == (str(path), "(file)")
    assert "UTF-8" in caught.value.message


def _live_funnels(tmp_path: Path) -> LiveFunnels:
    (tmp_path / "tiny.yaml").write_text(TINY, encoding="utf-8")
    settings = EngineSettings(funnels_dir=tmp_path, funnels=["tiny"])
    return LiveFunnels(settings, async_sessionmaker())


async def test_a_reload_with_a_bad_file_keeps_the_running_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = _live_funnels(tmp_path)
    bad = tmp_path / "tiny.yaml"
    bad.write_text(TINY.replace("version: 1", "version: !!int abc"), encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="leadstage_engine.reload"):
        assert await live.reload() is False
    assert f"{bad}:2: (yaml)" in caplog.text


async def test_a_reload_survives_whatever_loading_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _live_funnels(tmp_path)

    def broken(self: EngineSettings) -> dict[str, Funnel]:
        raise RuntimeError("something no one expected")

    monkeypatch.setattr(EngineSettings, "active_funnels", broken)
    with caplog.at_level(logging.ERROR, logger="leadstage_engine.reload"):
        assert await live.reload() is False
    assert "something no one expected" in caplog.text
    assert str(tmp_path) in caplog.text  # where the files were read from

    # The SIGHUP task goes on: a failed background task would stop the engine.
    task = asyncio.create_task(live.reload_on_request())
    live.request_reload()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- 2. a threshold's move waits for an event with no other move -------------------------------

MQL = """\
name: mql
version: 1
stages:
  - {name: Awareness, group: tofu}
  - {name: Interest, group: mofu}
  - {name: MQL, group: bofu}
exits: [Lost]
scores:
  engagement:
    thresholds:
      - {at: 50, effect: {move_to: MQL, sales_ready: true}}
rules:
  - name: lost
    priority: 10
    when: {type: deal_lost}
    then: {exit: Lost}
  - name: content
    priority: 20
    when: {type: content_download}
    then: {move_to: Interest, score: {engagement: 60}}
  - name: visit
    priority: 30
    when: {type: page_view, stage: {entered: false}}
    then: {move_to: Awareness}
  - name: unsubscribed
    priority: 30
    when: {type: "custom:unsubscribed"}
    then: {score: {engagement: -30}}
"""


def test_a_threshold_move_lost_to_a_rule_move_happens_on_the_next_event() -> None:
    funnel = parse_funnel(MQL)
    results = fold(funnel, [ev("content_download"), ev("page_view", 1), ev("page_view", 2)])
    assert moves(results) == [
        (None, "Interest", "entered", "content"),
        ("Interest", "MQL", "advanced", "threshold:engagement:50"),
    ]
    # The crossing (and its sales_ready) is still a fact of the event that crossed.
    kinds = [[(c.kind, c.rule) for c in r.changes if c.kind != "score"] for r in results]
    assert kinds == [
        [
            ("stage", "content"),
            ("threshold", "threshold:engagement:50"),
            ("sales_ready", "threshold:engagement:50"),
        ],
        [("stage", "threshold:engagement:50")],
        [],
    ]
    assert results[-1].state.stage == "MQL"


def test_a_level_triggered_threshold_move_never_leaves_an_exit_nor_goes_back() -> None:
    funnel = parse_funnel(MQL)
    lost = fold(funnel, [ev("content_download"), ev("deal_lost", 1), ev("page_view", 2)])
    assert lost[-1].state.stage == "Lost"
    assert lost[-1].changes == ()
    ahead = LeadState(stage="MQL", stage_entered_at=T0, scores={"engagement": 80.0})
    assert funnel.step(ahead, ev("page_view", 1), []).changes == ()
    below = fold(funnel, [ev("content_download"), ev("custom:unsubscribed", 1)])
    assert below[-1].state.stage == "Interest"  # 30 < 50: no move, nothing to catch up on


REGRESS = (
    MQL.replace("name: mql", "name: mql-regress").replace(
        "exits: [Lost]", "exits: [Lost]\nallow: {regress: true}"
    )
    + """\
  - name: not-now
    priority: 30
    when: {type: "custom:not_now"}
    then: {move_to: Interest}
"""
)


def test_a_deferred_threshold_move_is_taken_once_and_never_undoes_a_regress() -> None:
    funnel = parse_funnel(REGRESS)
    results = fold(
        funnel,
        [
            ev("content_download"),  # crosses 50, but the rule moved the lead: deferred
            ev("page_view", 1),  # takes the deferred move
            ev("custom:not_now", 2),  # a deliberate regress, score still 60
            ev("page_view", 3),  # must not move the lead back up
        ],
    )
    assert moves(results) == [
        (None, "Interest", "entered", "content"),
        ("Interest", "MQL", "advanced", "threshold:engagement:50"),
        ("MQL", "Interest", "regressed", "not-now"),
    ]
    assert results[-1].state.stage == "Interest"
    assert not any(name.endswith(":pending") for name in results[-1].state.fired_once)


def test_a_deferred_move_is_dropped_when_the_score_falls_back_below() -> None:
    funnel = parse_funnel(MQL)
    results = fold(
        funnel, [ev("content_download"), ev("custom:unsubscribed", 1), ev("page_view", 2)]
    )
    # 60 -> 30 in the event after the crossing: below the threshold, nothing to take.
    assert moves(results) == [(None, "Interest", "entered", "content")]
    assert results[-1].state.fired_once == frozenset()


def test_a_loyal_customer_looped_back_by_a_renewal_stays_there() -> None:
    from leadstage.funnels import load_presets

    funnel = load_presets()["six-stage-loyalty"]
    loyalty = LeadState(
        stage="Loyalty", stage_entered_at=T0, scores={"loyalty": 90.0}, scores_as_of=T0
    )
    renewal = funnel.step(loyalty, ev("renewal", 1), [])
    assert renewal.state.stage == "Purchase"
    later = funnel.step(renewal.state, ev("custom:product_used", 2), [])
    assert later.state.stage == "Purchase"  # the loop is not undone by the threshold


# -- 3. numbers must be finite ----------------------------------------------------------------

NUMBERS = """\
name: numbers
version: 1
stages:
  - {name: A, group: tofu}
  - {name: B, group: mofu}
  - {name: C, group: bofu}
scores:
  eng:
    half_life_days: 14
    attributes:
      - field: employee_count
        cases:
          - {gte: 50, points: 5}
    thresholds:
      - {at: 50, effect: {sales_ready: true}}
rules:
  - name: r1
    priority: 1
    when:
      properties: {amount: {gte: 10}}
      score: {name: eng, lt: 100}
      count: {at_least: 2, within_days: 7}
    then: {score: {eng: 5}}
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "field"),
    [
        ("{eng: 5}", "{eng: .nan}", 23, "rules.0.then.score.eng"),
        ("{eng: 5}", "{eng: 1.0e+400}", 23, "rules.0.then.score.eng"),
        ("{at: 50,", "{at: .nan,", 15, "scores.eng.thresholds.0.at"),
        ("half_life_days: 14", "half_life_days: .inf", 9, "scores.eng.half_life_days"),
        ("points: 5}", "points: -.inf}", 13, "scores.eng.attributes.0.cases.0.points"),
        ("{gte: 50,", "{gte: .inf,", 13, "scores.eng.attributes.0.cases.0.gte"),
        ("{amount: {gte: 10}}", "{amount: {gte: .nan}}", 20, "rules.0.when.properties.amount.gte"),
        ("{amount: {gte: 10}}", "{amount: .nan}", 20, "rules.0.when.properties.amount.eq"),
        ("{amount: {gte: 10}}", "{amount: [1, .inf]}", 20, "rules.0.when.properties.amount.in"),
        ("lt: 100}", "lt: .inf}", 21, "rules.0.when.score.0.lt"),
        ("within_days: 7}", "within_days: .nan}", 22, "rules.0.when.count.within_days"),
    ],
)
def test_non_finite_numbers_are_refused(old: str, new: str, line: int, field: str) -> None:
    assert old in NUMBERS
    parse_funnel(NUMBERS)  # the base is valid
    err = definition_error(NUMBERS.replace(old, new, 1), "numbers.yaml")
    assert (err.file, err.line, err.field) == ("numbers.yaml", line, field), str(err)
    assert "finite number" in err.message, str(err)


# -- 4. aida: a customer is not handed back to sales -----------------------------------------


def test_aida_a_customer_does_not_become_sales_ready_again() -> None:
    aida = load_presets()["aida"]
    results = fold(
        aida,
        [
            ev("demo_requested"),
            ev("webinar_attended", 1),  # Desire, engagement 40: sales-ready
            ev("purchase", 2),  # Action: no longer for sales
            ev("renewal", 3),  # matches no rule
            ev("page_view", 4),
        ],
    )
    assert [r.state.sales_ready for r in results] == [False, True, False, False, False]
    assert results[-1].state.stage == "Action"


# -- 5. b2b-six-stage: a disqualification is not undone by a call or a visit -----------------

DISQUALIFYING = {"outcome": "disqualified"}


def test_b2b_a_disqualifying_first_call_does_not_enter_the_funnel() -> None:
    b2b = load_presets()["b2b-six-stage"]
    first = b2b.step(LeadState(), ev("call", properties=DISQUALIFYING), [])
    assert first.state.stage is None
    assert [c for c in first.changes if c.kind == "stage"] == []
    # A plain call (or one with another outcome) still nurtures, as before.
    assert b2b.step(LeadState(), ev("call"), []).state.stage == "Engagement"
    answered = ev("call", properties={"outcome": "interested"})
    assert b2b.step(LeadState(), answered, []).state.stage == "Engagement"


def test_b2b_a_second_disqualifying_call_keeps_the_lead_disqualified() -> None:
    b2b = load_presets()["b2b-six-stage"]
    results = fold(
        b2b,
        [
            ev("demo_requested"),
            ev("call", 1, properties=DISQUALIFYING),
            ev("call", 2, properties=DISQUALIFYING),
        ],
    )
    assert results[-1].state.stage == "Disqualified"
    assert moves(results[-1:]) == []


@pytest.mark.parametrize("exit_type", ["custom:disqualified", "churned", "deal_lost"])
@pytest.mark.parametrize("visit", ["page_view", "ad_click"])
def test_b2b_a_visit_does_not_undo_an_exit(exit_type: str, visit: str) -> None:
    b2b = load_presets()["b2b-six-stage"]
    results = fold(b2b, [ev("page_view"), ev("purchase", 1), ev(exit_type, 2), ev(visit, 3)])
    assert results[2].state.stage in ("Disqualified", "Churned", "Lost")
    assert results[-1].state.stage == results[2].state.stage
    assert moves(results[-1:]) == []


PRICING = {"page_url": "https://example.com/pricing"}


@pytest.mark.parametrize(
    ("exit_type", "exit_stage"), [("deal_lost", "Lost"), ("churned", "Churned")]
)
@pytest.mark.parametrize(
    "visits",
    [
        [("page_view", {})],
        [("ad_click", {})],
        [("page_view", {}), ("page_view", {})],
        [("page_view", PRICING)],
        [("page_view", {"page_url": "https://example.com/customers/acme"})],
    ],
)
def test_loyalty_a_visit_does_not_undo_an_exit(
    exit_type: str, exit_stage: str, visits: list[tuple[str, dict[str, str]]]
) -> None:
    loyalty = load_presets()["six-stage-loyalty"]
    before = [ev("page_view"), ev("purchase", 1), ev(exit_type, 2)]
    after = [ev(visit, 3 + i / 10, properties=page) for i, (visit, page) in enumerate(visits)]
    results = fold(loyalty, [*before, *after])
    assert results[2].state.stage == exit_stage
    assert results[-1].state.stage == exit_stage
    assert moves(results[3:]) == []
    # A real buying signal still brings the lead back.
    back = fold(loyalty, [*before, ev("demo_requested", 4)])
    assert back[-1].state.stage == "Evaluation"


def test_loyalty_visits_still_bring_a_new_lead_in_and_along() -> None:
    loyalty = load_presets()["six-stage-loyalty"]
    results = fold(
        loyalty, [ev("page_view"), ev("page_view", 1), ev("page_view", 2, properties=PRICING)]
    )
    assert [r.state.stage for r in results] == ["Awareness", "Interest", "Evaluation"]


# -- 6. b2b-six-stage: a high-fit demo request is sales-ready on its first event ---------------

HIGH_FIT = {"domain": "acme.io", "industry": "fintech", "tier": 1}  # fit 10 + 15 = 25


@pytest.mark.parametrize("cta", ["demo_requested", "callback_requested"])
def test_b2b_a_high_fit_first_request_for_sales_is_sales_ready(cta: str) -> None:
    b2b = load_presets()["b2b-six-stage"]
    result = b2b.step(LeadState(), ev(cta, account=HIGH_FIT), [])
    assert result.state.scores["fit"] == 25.0
    assert result.state.sales_ready
    low_fit = b2b.step(LeadState(), ev(cta, account={"industry": "fintech"}), [])
    assert low_fit.state.sales_ready is False
    # High fit alone, without asking for sales, is not enough.
    assert b2b.step(LeadState(), ev("page_view", account=HIGH_FIT), []).state.sales_ready is False


@pytest.mark.parametrize(
    "then", ["{move_to: null}", "{sales_ready: null}", "{exit: null, score: {}}", "{}"]
)
def test_a_rule_whose_effects_are_all_null_is_refused(then: str) -> None:
    err = definition_error(NUMBERS.replace("then: {score: {eng: 5}}", f"then: {then}"), "n.yaml")
    assert (err.file, err.line, err.field) == ("n.yaml", 23, "rules.0.then"), str(err)
    assert "needs at least one of" in err.message, str(err)


def test_a_stored_version_with_a_rule_of_null_effects_still_parses() -> None:
    """Registered before the check: the registry's text is parsed again at every start,
    and an engine or API that refused it could not start."""
    text = NUMBERS.replace("then: {score: {eng: 5}}", "then: {move_to: null}")
    funnel = parse_funnel(text, "funnel_versions:numbers@1", stored=True)
    assert funnel.name == "numbers"
    # An empty `then` was refused before the check too, stored or not.
    err = definition_error(NUMBERS.replace("then: {score: {eng: 5}}", "then: {}"), "n.yaml")
    assert "needs at least one of" in err.message, str(err)
