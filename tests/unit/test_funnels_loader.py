"""Loading funnel definitions: errors name the file, the line and the field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from leadstage.funnels import (
    EventView,
    FunnelDefinitionError,
    LeadState,
    load_funnels,
    load_presets,
    parse_funnel,
)

MINIMAL = """\
name: tiny
version: 1
stages:
  - {name: Seen, group: tofu}
  - {name: Keen, group: mofu}
  - {name: Won, group: bofu}
exits: [Lost]
scores:
  heat:
    half_life_days: 7
rules:
  - name: seen
    priority: 10
    when: {type: page_view}
    then: {move_to: Seen}
  - name: keen
    priority: 20
    when: {type: demo_requested}
    then: {move_to: Keen, score: {heat: 10}}
"""
AT = datetime(2026, 11, 2, tzinfo=UTC)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, name: str = "b2b.yaml") -> FunnelDefinitionError:
    write(tmp_path, name, text)
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnels(tmp_path)
    return caught.value


def test_a_valid_definition_loads_next_to_the_presets(tmp_path: Path) -> None:
    write(tmp_path, "tiny.yaml", MINIMAL)
    write(tmp_path, "notes.txt", "not a funnel")
    funnels = load_funnels(tmp_path)
    assert set(load_presets()) < set(funnels)
    tiny = funnels["tiny"]
    assert tiny.stages == ("Seen", "Keen", "Won")
    assert tiny.groups == {"Seen": "tofu", "Keen": "mofu", "Won": "bofu"}
    assert tiny.exits == frozenset({"Lost"})
    assert tiny.account_rule.kind == "furthest"
    assert tiny.history_window.total_seconds() == 0
    assert load_funnels() == load_presets()


def test_an_unknown_stage_names_file_line_and_field(tmp_path: Path) -> None:
    text = MINIMAL.replace("then: {move_to: Keen,", "then: {move_to: Oportunity,")
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (19, "rules.1.then.move_to")
    assert err.message == "unknown stage 'Oportunity'"
    assert (
        str(err) == f"{tmp_path / 'b2b.yaml'}:19: rules.1.then.move_to: unknown stage 'Oportunity'"
    )
    assert err.file == str(tmp_path / "b2b.yaml")


def test_a_missing_field(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL.replace("  - {name: Keen, group: mofu}", "  - {name: Keen}"))
    assert (err.line, err.field, err.message) == (5, "stages.1.group", "Field required")
    err = error_of(tmp_path, MINIMAL.replace("version: 1\n", ""))
    assert (err.line, err.field, err.message) == (1, "version", "Field required")


def test_a_bad_type(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL.replace("version: 1", "version: two"))
    assert (err.line, err.field) == (2, "version")
    assert "valid integer" in err.message
    err = error_of(tmp_path, MINIMAL.replace("half_life_days: 7", "half_life_days: soon"))
    assert (err.line, err.field) == (10, "scores.heat.half_life_days")
    err = error_of(tmp_path, MINIMAL.replace("priority: 20", "priority: high"))
    assert (err.line, err.field) == (17, "rules.1.priority")


def test_a_duplicate_funnel_name_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MINIMAL)
    err = error_of(tmp_path, "# the same funnel again\n" + MINIMAL, name="b.yaml")
    assert (err.file, err.line, err.field) == (str(tmp_path / "b.yaml"), 2, "name")
    assert err.message == f"funnel 'tiny' is also defined in {tmp_path / 'a.yaml'}"


def test_two_stages_are_too_few(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL.replace("  - {name: Won, group: bofu}\n", ""))
    assert (err.line, err.field) == (3, "stages")
    assert err.message == "a funnel needs 3 to 10 stages, has 2"


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        ("then: {move_to: Seen}", "then: {exit: Gone}", 15, "rules.0.then.exit", "unknown exit"),
        ("score: {heat: 10}", "score: {hot: 10}", 19, "rules.1.then.score.hot", "unknown score"),
        ("{type: page_view}", "{type: page_veiw}", 14, "rules.0.when.type.0", "unknown touchp"),
        ("{type: page_view}", "{channel: tv}", 14, "rules.0.when.channel.0", "unknown channel"),
        ("name: seen", "name: 'a:b'", 12, "rules.0.name", "String should match"),
        ("name: keen", "name: seen", 16, "rules.1.name", "defined twice"),
        ("name: keen", "name: decay", 16, "rules.1.name", "reserved"),
        ("{type: page_view}", "{typ: page_view}", 14, "rules.0.when.typ", "Extra inputs"),
        ("{move_to: Seen}", "{move_to: Seen, exit: Lost}", 15, "rules.0.then", "not both"),
        ("{move_to: Seen}", "{}", 15, "rules.0.then", "needs at least one"),
        ("exits: [Lost]", "exits: [Seen]", 7, "exits.0", "both a stage and an exit"),
        ("group: mofu}", "group: middle}", 5, "stages.1.group", "Input should be"),
        (
            "- {name: Seen, group: tofu}",
            "- {name: Seen, group: bofu}",
            5,
            "stages.1.group",
            "mofu after bofu",
        ),
        (
            "{type: page_view}",
            "{properties: {url: {regex: '(['}}}",
            14,
            "rules.0.when.properties.url.regex",
            "invalid regular expression",
        ),
        (
            "{type: page_view}",
            "{properties: {n: {gte: 1, lt: z}}}",
            14,
            "rules.0.when.properties.n",
            "all be numbers",
        ),
        (
            "{type: page_view}",
            "{stage: {at_least: Gone}}",
            14,
            "rules.0.when.stage.at_least",
            "unknown stage",
        ),
        (
            "{type: page_view}",
            "{score: {name: cold, gte: 1}}",
            14,
            "rules.0.when.score.0.name",
            "unknown score",
        ),
        (
            "{type: page_view}",
            "{count: {at_least: 0, within_days: 3}}",
            14,
            "rules.0.when.count.at_least",
            "greater than or equal to 1",
        ),
        ("exits: [Lost]", "exits: [Lost]\nallow: {loop: true}", 8, "allow.loop", "a loop needs"),
        (
            "exits: [Lost]",
            "exits: [Lost]\naccount_rule: {kind: quorum, stage: Keen}",
            8,
            "account_rule",
            "needs a stage and a number",
        ),
        (
            "half_life_days: 7",
            "thresholds: [{at: 5, effect: {move_to: Nope}}]",
            10,
            "scores.heat.thresholds.0.effect.move_to",
            "unknown stage",
        ),
        ("name: tiny", "name: Tiny Funnel", 1, "name", "String should match"),
        ("priority: 10", "priority: 10\n    priority: 11", 14, "rules.0.priority", "duplicate key"),
        ("exits: [Lost]", "exits: [Lost", 8, "(yaml)", "expected ',' or ']'"),
    ],
)
def test_definition_errors_are_located(
    tmp_path: Path, old: str, new: str, line: int, field: str, message: str
) -> None:
    assert old in MINIMAL
    err = error_of(tmp_path, MINIMAL.replace(old, new, 1))
    assert (err.line, err.field) == (line, field), str(err)
    assert message in err.message, str(err)


def test_an_empty_file_or_a_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FunnelDefinitionError, match=r"^x.yaml:1: \(top level\): the file is empty"):
        parse_funnel("", "x.yaml")
    with pytest.raises(FunnelDefinitionError, match=r"^x.yaml:1: \(top level\): Input should be"):
        parse_funnel("- a\n- b\n", "x.yaml")


def test_a_directory_file_replaces_the_preset_of_the_same_name(tmp_path: Path) -> None:
    write(tmp_path, "mine.yaml", MINIMAL.replace("name: tiny", "name: aida").replace("1", "2", 1))
    funnels = load_funnels(tmp_path)
    assert funnels["aida"].stages == ("Seen", "Keen", "Won")
    assert funnels["aida"].version == 2
    assert load_presets()["aida"].stages[0] == "Awareness"


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_funnels(tmp_path / "nowhere")


def test_yaml_1_1_booleans_stay_strings() -> None:
    text = MINIMAL.replace(
        "when: {type: page_view}", "when: {type: page_view, account: {country: [NO, SE]}}"
    )
    funnel = parse_funnel(text)
    norway = EventView("s", "e", "page_view", AT, account={"country": "NO"})
    assert funnel.step(LeadState(), norway, []).state.stage == "Seen"


def test_the_fingerprint_changes_with_behaviour_only() -> None:
    base = parse_funnel(MINIMAL)
    described = parse_funnel(MINIMAL.replace("version: 1\n", "version: 1\ndescription: hi\n"))
    explicit_defaults = parse_funnel(
        MINIMAL.replace("exits: [Lost]", "exits: [Lost]\nallow: {skip: true}")
    )
    changed = parse_funnel(MINIMAL.replace("heat: 10", "heat: 11"))
    assert base.fingerprint == described.fingerprint == explicit_defaults.fingerprint
    assert changed.fingerprint != base.fingerprint


def test_a_funnel_that_forbids_skips_refuses_them() -> None:
    funnel = parse_funnel(MINIMAL.replace("exits: [Lost]", "exits: [Lost]\nallow: {skip: false}"))
    seen = funnel.step(LeadState(), EventView("s", "1", "page_view", AT), []).state
    assert funnel.transition("Seen", "Won") is None
    assert funnel.transition("Seen", "Keen") == "advanced"
    assert funnel.transition(None, "Won") == "entered"
    assert funnel.step(seen, EventView("s", "2", "demo_requested", AT), []).state.stage == "Keen"


def test_the_funnel_is_immutable() -> None:
    funnel = parse_funnel(MINIMAL)
    with pytest.raises(AttributeError):
        funnel.name = "other"


CONDITIONS = """\
name: conditions
version: 1
stages:
  - {name: A, group: tofu}
  - {name: B, group: mofu}
  - {name: C, group: bofu}
scores:
  s: {}
rules:
  - name: paid
    priority: 1
    when:
      channel: [paid_search, paid_social]
      utm: {medium: {regex: '^(cpc|ppc)$'}, source: {ne: bing}}
    then: {score: {s: 1}}
  - name: nested
    priority: 2
    when:
      properties: {page.url: {regex: /pricing}, referrer: {exists: false}}
    then: {score: {s: 10}}
  - name: big-eu
    priority: 3
    when:
      account: {country: {not_in: [US, CA]}, employee_count: {gte: 100, lt: 1000}}
    then: {score: {s: 100}}
  - name: late-in-the-alphabet
    priority: 4
    when:
      properties: {code: {gt: m}}
    then: {score: {s: 1000}}
"""


@pytest.mark.parametrize(
    ("fields", "points"),
    [
        ({"channel": "paid_search", "utm": {"medium": "cpc", "source": "google"}}, 1),
        ({"channel": "paid_search", "utm": {"medium": "cpc", "source": "bing"}}, 0),
        ({"channel": "email", "utm": {"medium": "cpc"}}, 0),
        ({"properties": {"page": {"url": "/pricing"}}}, 10),
        ({"properties": {"page": {"url": "/pricing"}, "referrer": "x"}}, 0),
        ({"properties": {"page.url": "/pricing"}}, 10),
        ({"account": {"country": "DE", "employee_count": 500}}, 100),
        ({"account": {"country": "US", "employee_count": 500}}, 0),
        ({"account": {"country": "DE", "employee_count": 1000}}, 0),
        ({"account": {"country": "DE"}}, 0),
        ({"properties": {"code": "x"}}, 1000),
        ({"properties": {"code": "a"}}, 0),
    ],
)
def test_conditions(fields: dict[str, object], points: float) -> None:
    funnel = parse_funnel(CONDITIONS)
    event = EventView("s", "e", "page_view", AT, **fields)  # type: ignore[arg-type]
    assert funnel.step(LeadState(), event, []).state.scores.get("s", 0.0) == points


def test_a_string_range_on_a_number_is_malformed() -> None:
    funnel = parse_funnel(CONDITIONS)
    event = EventView("s", "e", "page_view", AT, properties={"code": 7})
    result = funnel.step(LeadState(), event, [])
    assert result.skipped == (
        ("late-in-the-alphabet", "properties.code: gt needs a string, got int"),
    )


def test_rules_with_and_without_a_type_keep_their_priority_order() -> None:
    """The step tests only the rules that can match an event's type (an index by
    type); an untyped rule between typed ones must still be tried in its place."""
    text = """\
name: ordered
version: 1
stages:
  - {name: Seen, group: tofu}
  - {name: Keen, group: mofu}
  - {name: Won, group: bofu}
scores:
  heat: {}
rules:
  - name: viewed
    priority: 10
    when: {type: page_view}
    then: {score: {heat: 1}}
  - name: any-email-touch
    priority: 20
    when: {channel: email}
    then: {move_to: Keen}
  - name: viewed-again
    priority: 30
    when: {type: page_view}
    then: {move_to: Seen, score: {heat: 2}}
"""
    funnel = parse_funnel(text)
    email_view = EventView("s", "e1", "page_view", AT, channel="email")
    result = funnel.step(LeadState(), email_view, [])
    # One stage move per event, the first effective one: the untyped rule's.
    assert result.state.stage == "Keen"
    assert [(c.kind, c.rule) for c in result.changes] == [
        ("score", "viewed"),
        ("stage", "any-email-touch"),
        ("score", "viewed-again"),
    ]
    assert result.state.scores == {"heat": 3.0}
    # A type no typed rule names: only the untyped rule can match.
    call = EventView("s", "e2", "call", AT, channel="email")
    assert [c.rule for c in funnel.step(LeadState(), call, []).changes] == ["any-email-touch"]
    # And the index does not carry one type's rules over to another.
    direct_view = EventView("s", "e3", "page_view", AT, channel="direct")
    again = funnel.step(LeadState(), direct_view, [])
    assert again.state.stage == "Seen"
    assert [c.rule for c in again.changes] == ["viewed", "viewed-again", "viewed-again"]
