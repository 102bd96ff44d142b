"""The values a funnel reads and returns: events, lead states, changes and errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from leadstage.events import Touchpoint
    from leadstage.funnels._engine import Funnel

TransitionKind = Literal[
    "entered", "advanced", "skipped", "regressed", "looped", "exited", "reentered"
]
ChangeKind = Literal["stage", "score", "threshold", "sales_ready"]


def _require_aware(what: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")


@dataclass(frozen=True)
class EventView:
    """What a rule can see of a touchpoint."""

    source: str
    event_id: str
    type: str
    occurred_at: datetime
    channel: str | None = None
    utm: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)
    account: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_aware("occurred_at", self.occurred_at)

    @classmethod
    def from_touchpoint(cls, touchpoint: Touchpoint) -> EventView:
        """The view of a stored touchpoint (schema v1); absent fields are left out."""
        utm = touchpoint.utm.model_dump(exclude_none=True) if touchpoint.utm else {}
        account = touchpoint.account.model_dump(exclude_none=True) if touchpoint.account else {}
        return cls(
            source=touchpoint.source,
            event_id=touchpoint.event_id,
            type=str(touchpoint.type),
            occurred_at=touchpoint.occurred_at,
            channel=str(touchpoint.channel) if touchpoint.channel is not None else None,
            utm=utm,
            properties=dict(touchpoint.properties),
            account=account,
        )


@dataclass(frozen=True)
class LeadState:
    """Where one lead stands in one funnel. The engine stores it between events."""

    stage: str | None = None
    stage_entered_at: datetime | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    scores_as_of: datetime | None = None
    sales_ready: bool = False
    fired_once: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _require_aware("stage_entered_at", self.stage_entered_at)
        _require_aware("scores_as_of", self.scores_as_of)

    def score_at(self, funnel: Funnel, name: str, at: datetime) -> float:
        """The score ``name`` at time ``at``, decayed by the funnel's half-life (6 decimals).

        A score never given points is 0. Times before ``scores_as_of`` do not grow it.
        """
        value = self.scores.get(name)
        if value is None:
            return 0.0
        half_life = funnel.half_life_days(name)
        if half_life is None or self.scores_as_of is None:
            return round(value, 6)
        days = max((at - self.scores_as_of).total_seconds(), 0.0) / 86_400
        return round(value * float(0.5 ** (days / half_life)), 6)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form with a fixed key order (``fired_once`` sorted)."""
        return {
            "stage": self.stage,
            "stage_entered_at": _iso(self.stage_entered_at),
            "scores": dict(self.scores),
            "scores_as_of": _iso(self.scores_as_of),
            "sales_ready": self.sales_ready,
            "fired_once": sorted(self.fired_once),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LeadState:
        return cls(
            stage=data.get("stage"),
            stage_entered_at=_from_iso(data.get("stage_entered_at")),
            scores={str(k): float(v) for k, v in dict(data.get("scores") or {}).items()},
            scores_as_of=_from_iso(data.get("scores_as_of")),
            sales_ready=bool(data.get("sales_ready", False)),
            fired_once=frozenset(data.get("fired_once") or ()),
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class Change:
    """One observable change, for the lead's history and for publishing."""

    kind: ChangeKind
    rule: str
    from_stage: str | None = None
    to_stage: str | None = None
    transition: TransitionKind | None = None
    score: str | None = None
    delta: float | None = None
    value: float | None = None
    sales_ready: bool | None = None


class StepResult(NamedTuple):
    """What one event did to one lead.

    ``state`` is the input state object itself when nothing changed at all.
    ``skipped`` names the rules (or ``attributes:<score>:<field>``) that could
    not be evaluated on this event, with the reason (e.g. a regex on a number).
    """

    state: LeadState
    changes: tuple[Change, ...]
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class AccountRule:
    """How an account's stage derives from its contacts' stages.

    ``furthest``: the furthest stage any contact is in. ``quorum``: the same,
    but ``stage`` and the stages after it count only once at least
    ``contacts`` contacts are at ``stage`` or beyond; until then the account
    stays in the stage before ``stage``.
    """

    kind: Literal["furthest", "quorum"]
    stage: str | None = None
    contacts: int | None = None


class FunnelDefinitionError(ValueError):
    """A funnel definition that cannot be used, located in its file."""

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field}: {message}")
