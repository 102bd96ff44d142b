"""Funnel definitions and the pure function that moves a lead through one.

A funnel is an ordered list of stages, a set of exit states and rules that map
touchpoints to effects. Nothing here does I/O: the engine loads lead
positions, calls :meth:`Funnel.apply` per touchpoint and stores what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class StageGroup(StrEnum):
    TOFU = "tofu"
    MOFU = "mofu"
    BOFU = "bofu"


class TransitionKind(StrEnum):
    ENTERED = "entered"  # first stage of a lead new to this funnel
    ADVANCED = "advanced"  # to the next stage
    SKIPPED = "skipped"  # forward past one or more stages
    REGRESSED = "regressed"  # back to an earlier stage
    EXITED = "exited"  # to an exit state (lost, disqualified, churned)
    REENTERED = "reentered"  # from an exit state back into a stage


@dataclass(frozen=True)
class Stage:
    name: str
    group: StageGroup


@dataclass(frozen=True)
class Rule:
    """Moves a lead to ``to_stage`` (or exits it to ``exit_to``) on these event types."""

    name: str
    event_types: frozenset[str]
    to_stage: str | None = None
    exit_to: str | None = None


@dataclass(frozen=True)
class Position:
    """Where a lead stands in one funnel: a stage or an exit state."""

    stage: str
    entered_at: datetime


@dataclass(frozen=True)
class Transition:
    from_stage: str | None
    to_stage: str
    kind: TransitionKind
    rule: str


@dataclass(frozen=True)
class Funnel:
    name: str
    version: int
    stages: tuple[Stage, ...]
    exits: frozenset[str]
    rules: tuple[Rule, ...]
    allow_regression: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [stage.name for stage in self.stages]
        if not 3 <= len(names) <= 10:
            raise ValueError(f"funnel {self.name!r}: needs 3 to 10 stages, has {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"funnel {self.name!r}: stage names repeat")
        if overlap := self.exits & set(names):
            raise ValueError(f"funnel {self.name!r}: {sorted(overlap)} are stages and exits")
        for rule in self.rules:
            if (rule.to_stage is None) == (rule.exit_to is None):
                raise ValueError(f"rule {rule.name!r}: set exactly one of to_stage, exit_to")
            if rule.to_stage is not None and rule.to_stage not in names:
                raise ValueError(f"rule {rule.name!r}: unknown stage {rule.to_stage!r}")
            if rule.exit_to is not None and rule.exit_to not in self.exits:
                raise ValueError(f"rule {rule.name!r}: unknown exit {rule.exit_to!r}")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    def stage_index(self, stage: str) -> int | None:
        return self._index.get(stage)

    def apply(self, position: Position | None, event_type: str) -> Transition | None:
        """The transition this touchpoint causes, or None if it changes nothing.

        The first matching rule (in declaration order) that changes the
        position wins.
        """
        current = position.stage if position is not None else None
        for rule in self.rules:
            if event_type not in rule.event_types:
                continue
            transition = self._transition(current, rule)
            if transition is not None:
                return transition
        return None

    def _transition(self, current: str | None, rule: Rule) -> Transition | None:
        if rule.exit_to is not None:
            if current is None or current == rule.exit_to:
                return None  # nothing to exit from yet, or already there
            return Transition(current, rule.exit_to, TransitionKind.EXITED, rule.name)

        assert rule.to_stage is not None  # noqa: S101 - checked in __post_init__
        target = self._index[rule.to_stage]
        if current is None:
            return Transition(None, rule.to_stage, TransitionKind.ENTERED, rule.name)
        if current in self.exits:
            return Transition(current, rule.to_stage, TransitionKind.REENTERED, rule.name)
        here = self._index[current]
        if target == here + 1:
            kind = TransitionKind.ADVANCED
        elif target > here + 1:
            kind = TransitionKind.SKIPPED
        elif target < here and self.allow_regression:
            kind = TransitionKind.REGRESSED
        else:
            return None  # same stage, or a regression this funnel does not allow
        return Transition(current, rule.to_stage, kind, rule.name)


def _rule(name: str, types: str, *, to: str | None = None, exit_to: str | None = None) -> Rule:
    return Rule(name=name, event_types=frozenset(types.split()), to_stage=to, exit_to=exit_to)


#: The default funnel: the B2B six-stage model of the domain brief.
B2B_SIX_STAGE = Funnel(
    name="b2b-six-stage",
    version=1,
    stages=(
        Stage("Awareness", StageGroup.TOFU),
        Stage("Interest", StageGroup.TOFU),
        Stage("Action", StageGroup.MOFU),
        Stage("Engagement", StageGroup.MOFU),
        Stage("Opportunity", StageGroup.BOFU),
        Stage("Customer", StageGroup.BOFU),
    ),
    exits=frozenset({"Lost", "Churned"}),
    rules=(
        _rule("first-visit", "page_view ad_click", to="Awareness"),
        _rule(
            "came-back-for-content",
            "content_download newsletter_signup webinar_registered email_clicked",
            to="Interest",
        ),
        _rule(
            "converted-on-cta",
            "demo_requested callback_requested contact_form_submitted",
            to="Action",
        ),
        _rule("nurtured", "webinar_attended call trial_started", to="Engagement"),
        _rule(
            "meeting-scheduled", "meeting_scheduled meeting_held proposal_sent", to="Opportunity"
        ),
        _rule("deal-closed", "deal_won purchase", to="Customer"),
        _rule("deal-lost", "deal_lost", exit_to="Lost"),
        _rule("customer-churned", "churned", exit_to="Churned"),
    ),
)

FUNNELS: dict[str, Funnel] = {B2B_SIX_STAGE.name: B2B_SIX_STAGE}
DEFAULT_FUNNEL = B2B_SIX_STAGE.name
