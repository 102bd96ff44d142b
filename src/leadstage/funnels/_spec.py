"""The validated shape of a funnel definition file, and the conditions it can state.

The pydantic models check types and local consistency; :func:`check_references`
checks every name that points elsewhere in the file (stages, exits, scores).
Both report a location path, which the loader maps to a line of the YAML file.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadstage.events import Channel, TouchpointType

#: Rule names that the library itself uses in :class:`Change.rule`.
RESERVED_RULE_NAMES = frozenset({"decay", "sales_ready"})
UTM_KEYS = ("source", "medium", "name", "term", "content")
ACCOUNT_KEYS = ("id", "domain", "name", "industry", "employee_count", "country", "tier")
_BUILT_IN_TYPES = frozenset(t.value for t in TouchpointType)
_CUSTOM_TYPE = re.compile(r"^custom:[a-z0-9_.-]{1,100}$")
_CHANNELS = frozenset(c.value for c in Channel)

Path = tuple[str | int, ...]
Scalar = str | int | float | bool


#: Validation context of a definition being loaded (a file, a preset). Checks added
#: after definitions were first stored apply only then: ``funnel_versions`` keeps the
#: text of every registered version, and it is parsed again at every start.
LOADING = {"loading": True}


def loading(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("loading"))


class MalformedValueError(Exception):
    """A touchpoint value that a condition cannot be evaluated on (e.g. regex on a number)."""


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str | dict) else value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_kind(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if _is_number(a):
        return _is_number(b)
    return type(a) is type(b)


def _finite(value: object) -> None:
    # YAML reads .nan, .inf and 1.0e+400 as floats. NaN compares false with
    # everything (a condition or threshold on it silently never holds, points of it
    # poison the score) and an infinity is no amount: refuse them like any bad value.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Input should be a finite number, not {value}")


def _scalar(value: object) -> Scalar:
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"must be a string, number or boolean, not {type(value).__name__}")
    _finite(value)
    return value


def _bound(value: object) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("a range bound must be a number or a string")
    _finite(value)
    return value


def _check_type(value: str) -> str:
    if value not in _BUILT_IN_TYPES and not _CUSTOM_TYPE.match(value):
        raise ValueError(f"unknown touchpoint type {value!r} (built-in, or custom:<name>)")
    return value


def _check_channel(value: str) -> str:
    if value not in _CHANNELS:
        raise ValueError(f"unknown channel {value!r}; known: {', '.join(sorted(_CHANNELS))}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
#: Every number a funnel file gives (points, thresholds, bounds, days) is finite.
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
RuleName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", strict=True)
]
ScoreName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$", strict=True)]
EventType = Annotated[str, StringConstraints(strict=True), AfterValidator(_check_type)]
ChannelName = Annotated[str, StringConstraints(strict=True), AfterValidator(_check_channel)]
Types = Annotated[list[EventType], BeforeValidator(_as_list), Field(min_length=1)]


class Cond(_Model):
    """Conditions on one value; every operator given must hold."""

    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Any] | None = Field(default=None, min_length=1)
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None
    regex: Annotated[str, StringConstraints(strict=True)] | None = None
    exists: StrictBool | None = None

    @field_validator("eq", "ne")
    @classmethod
    def _scalar_value(cls, value: object) -> Scalar:
        return _scalar(value)

    @field_validator("in_", "not_in")
    @classmethod
    def _scalar_values(cls, values: list[object]) -> list[Scalar]:
        return [_scalar(value) for value in values]

    @field_validator("gt", "gte", "lt", "lte")
    @classmethod
    def _range_bound(cls, value: object) -> str | int | float:
        return _bound(value)

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            _regex(value)
        except (re.error, OverflowError) as err:  # OverflowError: a{4294967296}
            raise ValueError(f"invalid regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Cond:
        ops = self.operators
        if not ops - {"points"}:
            raise ValueError(
                "needs at least one of eq, ne, in, not_in, gt, gte, lt, lte, regex, exists"
            )
        bounds = [getattr(self, op) for op in ("gt", "gte", "lt", "lte") if op in ops]
        if len({isinstance(bound, str) for bound in bounds}) > 1:
            raise ValueError("range bounds must all be numbers or all be strings")
        return self

    @functools.cached_property
    def operators(self) -> frozenset[str]:
        # Cached: conditions are evaluated several times per event, and the model is
        # frozen (the cache is no field: equality, hashing and dumps ignore it).
        return frozenset("in" if name == "in_" else name for name in self.model_fields_set)

    def matches(self, section: str, key: str, value: object, present: bool) -> bool:
        """Whether ``value`` (``key`` of ``section``, e.g. properties) satisfies this
        condition.

        Raises :class:`MalformedValueError` when it cannot say (``regex`` on a number).
        """
        ops = self.operators
        if not present:
            return self.exists is False
        if self.exists is False:
            return False
        if "eq" in ops and not (_same_kind(value, self.eq) and value == self.eq):
            return False
        if "ne" in ops and _same_kind(value, self.ne) and value == self.ne:
            return False
        if self.in_ is not None and not any(
            _same_kind(value, item) and value == item for item in self.in_
        ):
            return False
        if self.not_in is not None and any(
            _same_kind(value, item) and value == item for item in self.not_in
        ):
            return False
        for op in ("gt", "gte", "lt", "lte"):
            if op not in ops:
                continue
            bound = getattr(self, op)
            if isinstance(bound, str) != isinstance(value, str) or not (
                isinstance(value, str) or _is_number(value)
            ):
                wanted = "a string" if isinstance(bound, str) else "a number"
                raise MalformedValueError(
                    f"{section}.{key}: {op} needs {wanted}, got {type(value).__name__}"
                )
            if not _compare(op, value, bound):
                return False
        if self.regex is not None:
            if not isinstance(value, str):
                raise MalformedValueError(
                    f"{section}.{key}: regex needs a string, got {type(value).__name__}"
                )
            if _regex(self.regex).search(value) is None:
                return False
        return True


def _compare(op: str, value: Any, bound: Any) -> bool:
    if op == "gt":
        return bool(value > bound)
    if op == "gte":
        return bool(value >= bound)
    if op == "lt":
        return bool(value < bound)
    return bool(value <= bound)


def _shorthand(value: object) -> object:
    """``key: value`` means ``{eq: value}``; ``key: [a, b]`` means ``{in: [a, b]}``."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {"in": value}
    return {"eq": value}


Condition = Annotated[Cond, BeforeValidator(_shorthand)]
Conditions = dict[str, Condition]


def lookup(values: Mapping[str, Any], key: str) -> tuple[Any, bool]:
    """``values[key]``, or a dotted path into nested mappings (``page.url``)."""
    if key in values:
        return values[key], True
    current: Any = values
    for part in key.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None, False
        current = current[part]
    return current, True


def conditions_hold(
    section: str, conditions: Mapping[Any, Cond], values: Mapping[str, Any]
) -> bool:
    for key, cond in conditions.items():
        value, present = lookup(values, key)
        if not cond.matches(section, key, value, present):
            return False
    return True


class StageCond(_Model):
    """Where the lead stands before the event."""

    in_: list[Name] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Name] | None = Field(default=None, min_length=1)
    at_least: Name | None = None
    before: Name | None = None
    entered: StrictBool | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> StageCond:
        if not self.model_fields_set:
            raise ValueError("needs at least one of in, not_in, at_least, before, entered")
        return self


class ScoreCond(_Model):
    name: ScoreName
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ScoreCond:
        if not self.model_fields_set - {"name"}:
            raise ValueError("needs at least one of gt, gte, lt, lte")
        return self

    def holds(self, value: float) -> bool:
        return all(
            _compare(op, value, bound)
            for op in ("gt", "gte", "lt", "lte")
            if (bound := getattr(self, op)) is not None
        )


ScoreConds = Annotated[list[ScoreCond], BeforeValidator(_as_list), Field(min_length=1)]


class Count(_Model):
    """At least ``at_least`` matching events (this one included) within ``within_days``."""

    type: Types | None = None
    properties: Conditions | None = None
    at_least: Annotated[StrictInt, Field(ge=1, le=1000)]
    within_days: Annotated[Number, Field(gt=0, le=730)]


class When(_Model):
    type: Types | None = None
    channel: Annotated[list[ChannelName], BeforeValidator(_as_list), Field(min_length=1)] | None = (
        None
    )
    properties: Conditions = Field(default_factory=dict)
    utm: dict[Literal["source", "medium", "name", "term", "content"], Condition] = Field(
        default_factory=dict
    )
    account: dict[
        Literal["id", "domain", "name", "industry", "employee_count", "country", "tier"],
        Condition,
    ] = Field(default_factory=dict)
    count: Count | None = None
    stage: StageCond | None = None
    score: ScoreConds | None = None


class Then(_Model):
    move_to: Name | None = None
    exit: Name | None = None
    score: dict[ScoreName, Number] = Field(default_factory=dict)
    sales_ready: StrictBool | None = None

    @model_validator(mode="after")
    def _one_move(self, info: ValidationInfo) -> Then:
        if self.move_to is not None and self.exit is not None:
            raise ValueError("a rule may either move_to a stage or exit, not both")
        if not self.model_fields_set or (self.model_fields_set == {"score"} and not self.score):
            raise ValueError("needs at least one of move_to, exit, score, sales_ready")
        # By value: `move_to: null` (or `sales_ready: null`) alone is a rule that matches
        # and does nothing, most likely a typo. Only in a definition being loaded: a
        # version already stored may have it, and must still parse (see LOADING).
        effects = (self.move_to, self.exit, self.sales_ready)
        if loading(info) and effects == (None, None, None) and not self.score:
            raise ValueError("needs at least one of move_to, exit, score, sales_ready (not null)")
        return self


class RuleSpec(_Model):
    name: RuleName
    priority: StrictInt
    when: When = Field(default_factory=When)
    then: Then
    once: StrictBool = False


class Case(Cond):
    points: Number


class Attribute(_Model):
    field: Literal["domain", "name", "industry", "employee_count", "country", "tier"]
    cases: Annotated[list[Case], Field(min_length=1)]


class ThresholdEffect(_Model):
    move_to: Name | None = None
    sales_ready: StrictBool | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ThresholdEffect:
        if self.move_to is None and self.sales_ready is None:
            raise ValueError("needs move_to or sales_ready")
        return self


class Threshold(_Model):
    at: Number
    effect: ThresholdEffect


class ScoreSpec(_Model):
    description: str = ""
    half_life_days: Annotated[Number, Field(gt=0)] | None = None
    attributes: list[Attribute] = Field(default_factory=list)
    thresholds: list[Threshold] = Field(default_factory=list)


class StageSpec(_Model):
    name: Name
    group: Literal["tofu", "mofu", "bofu"]


class Allow(_Model):
    skip: StrictBool = True
    regress: StrictBool = False
    loop: StrictBool = False


class LoopSpec(_Model):
    from_: Annotated[Name, Field(alias="from")]
    to: Name


class SalesReadySpec(_Model):
    stage: StageCond | None = None
    score: ScoreConds | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> SalesReadySpec:
        if self.stage is None and self.score is None:
            raise ValueError("needs a stage or a score condition")
        return self


class AccountRuleSpec(_Model):
    kind: Literal["furthest", "quorum"]
    stage: Name | None = None
    contacts: Annotated[StrictInt, Field(ge=2)] | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> AccountRuleSpec:
        if self.kind == "quorum" and (self.stage is None or self.contacts is None):
            raise ValueError("a quorum needs a stage and a number of contacts")
        if self.kind == "furthest" and (self.stage is not None or self.contacts is not None):
            raise ValueError("'furthest' takes no stage or contacts")
        return self


class FunnelSpec(_Model):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,99}$", strict=True)]
    version: Annotated[StrictInt, Field(ge=1)]
    description: str = ""
    stages: list[StageSpec]
    exits: list[Name] = Field(default_factory=list)
    allow: Allow = Field(default_factory=Allow)
    loop: LoopSpec | None = None
    scores: dict[ScoreName, ScoreSpec] = Field(default_factory=dict)
    sales_ready: SalesReadySpec | None = None
    account_rule: AccountRuleSpec = Field(default_factory=lambda: AccountRuleSpec(kind="furthest"))
    rules: list[RuleSpec] = Field(default_factory=list)

    @field_validator("stages")
    @classmethod
    def _three_to_ten(cls, stages: list[StageSpec]) -> list[StageSpec]:
        if not 3 <= len(stages) <= 10:
            raise ValueError(f"a funnel needs 3 to 10 stages, has {len(stages)}")
        return stages


def _stage_cond_refs(
    cond: StageCond, path: Path, stages: Sequence[str], exits: Sequence[str]
) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    for key, names in (("in", cond.in_), ("not_in", cond.not_in)):
        for i, name in enumerate(names or ()):
            if name not in stages and name not in exits:
                problems.append(((*path, key, i), f"unknown stage or exit {name!r}"))
    for key, bound in (("at_least", cond.at_least), ("before", cond.before)):
        if bound is not None and bound not in stages:
            problems.append(((*path, key), f"unknown stage {bound!r}"))
    return problems


def _score_refs(
    conds: Sequence[ScoreCond] | None, path: Path, scores: Mapping[str, object]
) -> list[tuple[Path, str]]:
    return [
        ((*path, i, "name"), f"unknown score {cond.name!r}")
        for i, cond in enumerate(conds or ())
        if cond.name not in scores
    ]


def check_references(spec: FunnelSpec) -> list[tuple[Path, str]]:
    """Every name the definition uses must be defined in it; in file order."""
    problems: list[tuple[Path, str]] = []
    stages = [stage.name for stage in spec.stages]
    exits = list(spec.exits)
    order = {"tofu": 0, "mofu": 1, "bofu": 2}
    for i, stage in enumerate(spec.stages):
        if stage.name in stages[:i]:
            problems.append((("stages", i, "name"), f"stage {stage.name!r} is defined twice"))
        if i and order[stage.group] < order[spec.stages[i - 1].group]:
            problems.append(
                (("stages", i, "group"), f"{stage.group} after {spec.stages[i - 1].group}")
            )
    for i, name in enumerate(exits):
        if name in exits[:i]:
            problems.append((("exits", i), f"exit {name!r} is listed twice"))
        if name in stages:
            problems.append((("exits", i), f"{name!r} is both a stage and an exit"))
    if spec.allow.loop and spec.loop is None:
        problems.append((("allow", "loop"), "a loop needs 'loop: {from: <stage>, to: <stage>}'"))
    if spec.loop is not None:
        if not spec.allow.loop:
            problems.append((("loop",), "set allow.loop: true to use a loop"))
        for key, loop_stage in (("from", spec.loop.from_), ("to", spec.loop.to)):
            if loop_stage not in stages:
                problems.append((("loop", key), f"unknown stage {loop_stage!r}"))
        if (
            spec.loop.from_ in stages
            and spec.loop.to in stages
            and stages.index(spec.loop.from_) <= stages.index(spec.loop.to)
        ):
            problems.append((("loop",), "a loop goes from a later stage back to an earlier one"))
    for score, score_spec in spec.scores.items():
        seen: list[str] = []
        for i, attribute in enumerate(score_spec.attributes):
            if attribute.field in seen:
                problems.append(
                    (("scores", score, "attributes", i, "field"), f"{attribute.field!r} twice")
                )
            seen.append(attribute.field)
        ats: list[float] = []
        for i, threshold in enumerate(score_spec.thresholds):
            path: Path = ("scores", score, "thresholds", i)
            if threshold.at in ats:
                problems.append(((*path, "at"), f"a threshold at {threshold.at:g} is repeated"))
            ats.append(threshold.at)
            target = threshold.effect.move_to
            if target is not None and target not in stages:
                problems.append(((*path, "effect", "move_to"), f"unknown stage {target!r}"))
    if spec.sales_ready is not None:
        if spec.sales_ready.stage is not None:
            problems += _stage_cond_refs(
                spec.sales_ready.stage, ("sales_ready", "stage"), stages, exits
            )
        problems += _score_refs(spec.sales_ready.score, ("sales_ready", "score"), spec.scores)
    if spec.account_rule.stage is not None and spec.account_rule.stage not in stages:
        problems.append((("account_rule", "stage"), f"unknown stage {spec.account_rule.stage!r}"))
    names: list[str] = []
    for i, rule in enumerate(spec.rules):
        path = ("rules", i)
        if rule.name in names:
            problems.append(((*path, "name"), f"rule {rule.name!r} is defined twice"))
        if rule.name in RESERVED_RULE_NAMES:
            problems.append(((*path, "name"), f"{rule.name!r} is reserved"))
        names.append(rule.name)
        if rule.then.move_to is not None and rule.then.move_to not in stages:
            problems.append(((*path, "then", "move_to"), f"unknown stage {rule.then.move_to!r}"))
        if rule.then.exit is not None and rule.then.exit not in exits:
            problems.append(((*path, "then", "exit"), f"unknown exit {rule.then.exit!r}"))
        for score in rule.then.score:
            if score not in spec.scores:
                problems.append(((*path, "then", "score", score), f"unknown score {score!r}"))
        if rule.when.stage is not None:
            problems += _stage_cond_refs(rule.when.stage, (*path, "when", "stage"), stages, exits)
        problems += _score_refs(rule.when.score, (*path, "when", "score"), spec.scores)
    return problems
