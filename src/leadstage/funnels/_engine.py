"""A validated funnel and the pure step that folds one touchpoint into a lead's state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from leadstage.funnels._model import (
    AccountRule,
    Change,
    EventView,
    FunnelDefinitionError,
    LeadState,
    StepResult,
    TransitionKind,
)
from leadstage.funnels._spec import (
    Allow,
    Attribute,
    Cond,
    Count,
    FunnelSpec,
    LoopSpec,
    MalformedValueError,
    RuleSpec,
    StageCond,
    Threshold,
    check_references,
    conditions_hold,
    lookup,
)


def fingerprint(spec: FunnelSpec) -> str:
    """A hash of everything that affects behaviour (descriptions left out)."""
    data = spec.model_dump(mode="json", by_alias=True)
    data.pop("description", None)
    for score in data["scores"].values():
        score.pop("description", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class FunnelSource:
    """Where a definition was read from: its file, its exact text and the line of ``version``.

    The version registry stores the text, so a version can run (or be replayed)
    after its file has changed, and points at the ``version`` line when a file
    changed without a version bump.
    """

    file: str
    text: str
    version_line: int | None = None


@dataclass
class _Step:
    """The mutable working state of one :meth:`Funnel.step` call."""

    stage: str | None
    entered_at: datetime | None
    sales_ready: bool
    scores: dict[str, float]
    fired: set[str]
    moved: bool = False
    touched: bool = False
    sales_ready_set: bool = False
    changes: list[Change] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Funnel:
    """A validated, immutable funnel definition. Build one with the loader functions."""

    __slots__ = (
        "_attributes",
        "_half_lives",
        "_index",
        "_rules",
        "_rules_by_type",
        "_thresholds",
        "account_rule",
        "allow",
        "description",
        "exits",
        "fingerprint",
        "groups",
        "history_window",
        "loop",
        "name",
        "score_names",
        "source",
        "spec",
        "stages",
        "version",
    )

    name: str
    version: int
    description: str
    stages: tuple[str, ...]
    exits: frozenset[str]
    groups: Mapping[str, str]
    history_window: timedelta
    account_rule: AccountRule
    allow: Allow
    loop: LoopSpec | None
    score_names: tuple[str, ...]
    fingerprint: str
    source: FunnelSource | None
    spec: FunnelSpec
    _index: Mapping[str, int]
    _attributes: tuple[tuple[str, str, Attribute], ...]
    _half_lives: Mapping[str, float | None]
    _rules: tuple[RuleSpec, ...]
    _rules_by_type: dict[str, tuple[RuleSpec, ...]]
    _thresholds: tuple[tuple[str, tuple[Threshold, ...]], ...]

    def __init__(self, spec: FunnelSpec, source: FunnelSource | None = None) -> None:
        for path, message in check_references(spec):
            field_name = ".".join(str(part) for part in path)
            raise FunnelDefinitionError(f"<funnel {spec.name}>", None, field_name, message)
        values: dict[str, object] = {
            "spec": spec,
            "name": spec.name,
            "version": spec.version,
            "description": spec.description,
            "stages": tuple(stage.name for stage in spec.stages),
            "exits": frozenset(spec.exits),
            "groups": MappingProxyType({stage.name: stage.group for stage in spec.stages}),
            "allow": spec.allow,
            "loop": spec.loop,
            "score_names": tuple(spec.scores),
            "account_rule": AccountRule(
                spec.account_rule.kind, spec.account_rule.stage, spec.account_rule.contacts
            ),
            "history_window": max(
                (
                    timedelta(days=rule.when.count.within_days)
                    for rule in spec.rules
                    if rule.when.count is not None
                ),
                default=timedelta(0),
            ),
            "fingerprint": fingerprint(spec),
            "source": source,
            "_index": MappingProxyType({stage.name: i for i, stage in enumerate(spec.stages)}),
            # (score, the key it fires once under, attribute), in definition order.
            "_attributes": tuple(
                (score, f"attributes:{score}:{attribute.field}", attribute)
                for score, score_spec in spec.scores.items()
                for attribute in score_spec.attributes
            ),
            # Each score's thresholds, lowest first.
            "_thresholds": tuple(
                (score, tuple(sorted(score_spec.thresholds, key=lambda t: t.at)))
                for score, score_spec in spec.scores.items()
            ),
            "_half_lives": MappingProxyType(
                {name: score.half_life_days for name, score in spec.scores.items()}
            ),
            # Lower priority first; sorted() is stable, so ties keep file order.
            "_rules": tuple(sorted(spec.rules, key=lambda rule: rule.priority)),
            # Filled on demand by _rules_for: a cache, not part of the definition.
            "_rules_by_type": {},
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Funnel is immutable; cannot set {key!r}")

    def __repr__(self) -> str:
        return f"Funnel(name={self.name!r}, version={self.version})"

    @property
    def rules(self) -> tuple[RuleSpec, ...]:
        """The rules in evaluation order."""
        return self._rules

    def _rules_for(self, event_type: str) -> tuple[RuleSpec, ...]:
        """The rules, in evaluation order, that can match an event of this type.

        Most rules name the event types they look at, and a funnel has tens of rules:
        matching only the candidates keeps the step from testing every rule on every
        event. The result equals testing them all, because a rule whose ``when.type``
        leaves the type out can never match it."""
        rules = self._rules_by_type.get(event_type)
        if rules is None:
            rules = tuple(
                rule
                for rule in self._rules
                if rule.when.type is None or event_type in rule.when.type
            )
            self._rules_by_type[event_type] = rules
        return rules

    def half_life_days(self, score: str) -> float | None:
        """The score's half-life, or None if it does not decay (or is not defined here)."""
        return self._half_lives.get(score)

    def stage_index(self, stage: str) -> int | None:
        return self._index.get(stage)

    def account_stage(self, contact_stages: Iterable[str | None]) -> str | None:
        """The account's stage from its contacts' stages (exits and None count for nothing)."""
        counts = [0] * len(self.stages)
        for stage in contact_stages:
            index = self._index.get(stage) if stage is not None else None
            if index is not None:
                counts[index] += 1
        return self.account_stage_of(counts)

    def account_stage_of(self, contacts_per_stage: Sequence[int]) -> str | None:
        """The account's stage from the number of its contacts now in each stage (in
        funnel order).

        ``furthest``: the furthest stage any contact is in. ``quorum`` (stage G, N
        contacts): the same while that stage is before G; G and the stages after it
        count only once at least N contacts are in G or beyond, and until then the
        account is in the stage just before G (none if G is the first stage).
        """
        furthest = max((i for i, n in enumerate(contacts_per_stage) if n > 0), default=None)
        if furthest is None:
            return None
        rule = self.account_rule
        if rule.kind == "quorum" and rule.stage is not None and rule.contacts is not None:
            gate = self._index[rule.stage]
            if furthest >= gate and sum(contacts_per_stage[gate:]) < rule.contacts:
                furthest = gate - 1
                if furthest < 0:
                    return None
        return self.stages[furthest]

    def account_move(self, current: str | None, target: str | None) -> TransitionKind:
        """The kind of an account's move. Unlike a lead's, it is never refused: the
        account follows its contacts, so it can go back even where leads cannot.

        ``entered`` (from no stage), ``exited`` (to no stage: no contact counts any
        more), ``advanced``, ``skipped``, ``looped`` (to ``loop.to`` from ``loop.from``
        or later, when the funnel allows loops) or ``regressed``.
        """
        if current is None or self._index.get(current) is None:
            return "entered"
        if target is None:
            return "exited"
        here, there = self._index[current], self._index[target]
        if there == here + 1:
            return "advanced"
        if there > here:
            return "skipped"
        loop = self.loop
        if (
            self.allow.loop
            and loop is not None
            and target == loop.to
            and here >= self._index[loop.from_]
        ):
            return "looped"
        return "regressed"

    # -- the step -------------------------------------------------------------------------

    def step(self, state: LeadState, event: EventView, history: Sequence[EventView]) -> StepResult:
        """Fold one event into the lead's state.

        ``history`` is this lead's earlier events, in event-time order, within
        :attr:`history_window` before ``event.occurred_at`` (older ones are ignored).
        """
        at = event.occurred_at
        before = {name: state.score_at(self, name, at) for name in state.scores}
        for name in self.score_names:
            before.setdefault(name, 0.0)
        run = _Step(
            stage=state.stage,
            entered_at=state.stage_entered_at,
            sales_ready=state.sales_ready,
            scores=dict(before),
            fired=set(state.fired_once),
        )
        self._apply_attributes(run, event)
        for rule in self._rules_for(event.type):
            if rule.once and rule.name in run.fired:
                continue
            try:
                matched = self._matches(rule, state, before, event, history)
            except MalformedValueError as err:
                run.skipped.append((rule.name, str(err)))
                continue
            if not matched:
                continue
            if rule.once:
                run.fired.add(rule.name)
            then = rule.then
            if then.move_to is not None or then.exit is not None:
                self._move(run, rule.name, then.move_to or then.exit or "", at, threshold=False)
            for score, points in then.score.items():
                self._add(run, rule.name, score, points)
            if then.sales_ready is not None:
                self._set_ready(run, rule.name, then.sales_ready)
        self._apply_thresholds(run, before, at)
        self._apply_sales_ready_condition(run)
        return self._result(state, run, before, at)

    def _apply_attributes(self, run: _Step, event: EventView) -> None:
        for score, key, attribute in self._attributes:
            if key in run.fired:
                continue
            value, present = lookup(event.account, attribute.field)
            if not present or value is None:
                continue
            try:
                points = next(
                    (
                        case.points
                        for case in attribute.cases
                        if case.matches("account", attribute.field, value, True)
                    ),
                    0.0,
                )
            except MalformedValueError as err:
                run.skipped.append((key, str(err)))
                continue
            run.fired.add(key)
            self._add(run, key, score, points)

    def _apply_thresholds(self, run: _Step, before: Mapping[str, float], at: datetime) -> None:
        """A threshold fires in the event whose score crosses it upward: its fact, its
        ``sales_ready`` and its ``move_to``.

        An event moves a lead at most once. When a rule already moved the lead in the
        crossing event, the threshold's move is deferred, not lost: a ``:pending`` mark
        (kept with the once-only rules) makes the lead's next event without a move take
        it, if the score is still at or above the threshold. Once taken (or refused:
        forward only, never out of an exit) it is done until the next crossing, so a
        rule's later regress or loop is never undone by the threshold.
        """
        for score, thresholds in self._thresholds:
            low, high = before.get(score, 0.0), run.scores.get(score, 0.0)
            for threshold in thresholds:
                name = f"threshold:{score}:{threshold.at:g}"
                pending = f"{name}:pending"
                if high < threshold.at:
                    run.fired.discard(pending)  # fell back below: the next crossing decides
                    continue
                crossed = low < threshold.at
                if crossed:
                    run.changes.append(Change(kind="threshold", rule=name, score=score, value=high))
                if threshold.effect.move_to is not None and (crossed or pending in run.fired):
                    if run.moved:
                        run.fired.add(pending)  # a rule moved the lead in this event
                    else:
                        run.fired.discard(pending)
                        self._move(run, name, threshold.effect.move_to, at, threshold=True)
                if crossed and threshold.effect.sales_ready is not None:
                    self._set_ready(run, name, threshold.effect.sales_ready)

    def _apply_sales_ready_condition(self, run: _Step) -> None:
        condition = self.spec.sales_ready
        if condition is None or run.sales_ready or run.sales_ready_set:
            return
        if condition.stage is not None and not self._stage_holds(condition.stage, run.stage):
            return
        if condition.score is not None and not all(
            cond.holds(run.scores.get(cond.name, 0.0)) for cond in condition.score
        ):
            return
        self._set_ready(run, "sales_ready", True)

    def _result(
        self, state: LeadState, run: _Step, before: Mapping[str, float], at: datetime
    ) -> StepResult:
        changes = run.changes
        scores: Mapping[str, float] = state.scores
        as_of = state.scores_as_of
        if run.touched:
            decay = [
                Change(
                    kind="score",
                    rule="decay",
                    score=name,
                    delta=round(before[name] - old, 6),
                    value=before[name],
                )
                for name, old in state.scores.items()
                if round(before[name] - old, 6) != 0
            ]
            changes = decay + changes
            order = [name for name in self.score_names if name in run.scores]
            order += [name for name in run.scores if name not in self._half_lives]
            scores = {name: round(run.scores[name], 6) for name in order}
            as_of = at if state.scores_as_of is None else max(at, state.scores_as_of)
        fired = frozenset(run.fired)
        if not changes and fired == state.fired_once:
            return StepResult(state, (), tuple(run.skipped))
        new_state = LeadState(
            stage=run.stage,
            stage_entered_at=run.entered_at,
            scores=scores,
            scores_as_of=as_of,
            sales_ready=run.sales_ready,
            fired_once=fired,
        )
        return StepResult(new_state, tuple(changes), tuple(run.skipped))

    def _add(self, run: _Step, rule: str, score: str, points: float) -> None:
        if points == 0:
            return
        value = round(run.scores.get(score, 0.0) + points, 6)
        run.scores[score] = value
        run.touched = True
        run.changes.append(
            Change(kind="score", rule=rule, score=score, delta=round(points, 6), value=value)
        )

    def _set_ready(self, run: _Step, rule: str, value: bool) -> None:
        run.sales_ready_set = True
        if run.sales_ready != value:
            run.sales_ready = value
            run.changes.append(Change(kind="sales_ready", rule=rule, sales_ready=value))

    def _move(self, run: _Step, rule: str, target: str, at: datetime, *, threshold: bool) -> None:
        if run.moved:
            return  # at most one stage move per event: the first effective one
        kind = self.transition(run.stage, target, forward_only=threshold)
        if kind is None:
            return
        run.changes.append(
            Change(kind="stage", rule=rule, from_stage=run.stage, to_stage=target, transition=kind)
        )
        run.stage, run.entered_at, run.moved = target, at, True

    def transition(
        self, current: str | None, target: str, *, forward_only: bool = False
    ) -> TransitionKind | None:
        """The kind of the move from ``current`` to ``target``, or None if it is refused.

        ``forward_only`` (threshold moves): no exits, re-entries, regressions or loops.
        """
        if current == target:
            return None
        if target in self.exits:
            return None if forward_only or current is None else "exited"
        here, there = self._index.get(current or ""), self._index[target]
        if current is None or (here is None and current not in self.exits):
            return "entered"  # new to the funnel (or in a stage this version dropped)
        if here is None:
            return None if forward_only else "reentered"
        if there == here + 1:
            return "advanced"
        if there > here:
            return "skipped" if self.allow.skip else None
        if forward_only:
            return None
        loop = self.loop
        if (
            self.allow.loop
            and loop is not None
            and target == loop.to
            and here >= self._index[loop.from_]
        ):
            return "looped"
        return "regressed" if self.allow.regress else None

    # -- conditions -----------------------------------------------------------------------

    def _stage_holds(self, cond: StageCond, current: str | None) -> bool:
        if cond.entered is not None and (current is not None) != cond.entered:
            return False
        if cond.in_ is not None and current not in cond.in_:
            return False
        if cond.not_in is not None and current in cond.not_in:
            return False
        here = self._index.get(current) if current is not None else None
        if cond.at_least is not None and (here is None or here < self._index[cond.at_least]):
            return False
        if cond.before is not None and current is not None:
            return here is not None and here < self._index[cond.before]
        return True

    def _matches(
        self,
        rule: RuleSpec,
        state: LeadState,
        scores: Mapping[str, float],
        event: EventView,
        history: Sequence[EventView],
    ) -> bool:
        when = rule.when
        if when.type is not None and event.type not in when.type:
            return False
        if when.channel is not None and event.channel not in when.channel:
            return False
        if when.stage is not None and not self._stage_holds(when.stage, state.stage):
            return False
        if when.score is not None and not all(
            cond.holds(scores.get(cond.name, 0.0)) for cond in when.score
        ):
            return False
        if not (
            conditions_hold("properties", when.properties, event.properties)
            and conditions_hold("utm", when.utm, event.utm)
            and conditions_hold("account", when.account, event.account)
        ):
            return False
        return when.count is None or _count_holds(
            when.count, when.type, when.properties, event, history
        )


def _count_holds(
    count: Count,
    rule_types: Sequence[str] | None,
    rule_properties: Mapping[str, Cond],
    event: EventView,
    history: Sequence[EventView],
) -> bool:
    """This event plus the matching history events within the window reach ``at_least``.

    ``type`` and ``properties`` default to the rule's own. A history event whose
    value cannot be evaluated simply does not count.
    """
    types = count.type if count.type is not None else rule_types
    conditions = count.properties if count.properties is not None else rule_properties

    def counts(candidate: EventView) -> bool:
        if types is not None and candidate.type not in types:
            return False
        return conditions_hold("properties", conditions, candidate.properties)

    total = 1 if counts(event) else 0
    start = event.occurred_at - timedelta(days=count.within_days)
    for earlier in history:
        if total >= count.at_least:
            break
        if (earlier.source, earlier.event_id) == (event.source, event.event_id):
            continue
        if not start <= earlier.occurred_at <= event.occurred_at:
            continue
        try:
            if counts(earlier):
                total += 1
        except MalformedValueError:
            continue
    return total >= count.at_least
