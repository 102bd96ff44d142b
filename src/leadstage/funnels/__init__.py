"""Configurable funnels: definitions in YAML, and the pure step that moves a lead through one.

The engine keeps one :class:`LeadState` per lead and funnel and folds the lead's
touchpoints, in event-time order, through :meth:`Funnel.step`. Nothing here reads
a clock, draws a random number or does I/O (except reading definition files), so
the same events in the same order always give equal states and changes. Scores
are stored rounded to 6 decimals. Persist ``result.state`` whenever it is not the
input state (a once-only rule may fire without an observable change).

Funnels ship as presets (``presets/*.yaml`` in this package, :func:`load_presets`);
:func:`load_funnels` adds the ``*.yaml`` files of a directory, a file with a
preset's name replacing the preset. :attr:`Funnel.fingerprint` hashes the
definition: store it with ``(name, version)`` and refuse a changed fingerprint
under an unchanged version (the stage engine's version registry does).
:attr:`Funnel.source` keeps the file, its text and the line of ``version``.

Definition file format (one funnel per file)
--------------------------------------------
::

    name: b2b-six-stage            # [a-z0-9-], unique across files
    version: 1                     # int >= 1; bump it whenever the definition changes
    description: ...               # optional
    stages:                        # 3 to 10, in funnel order; groups never go back up
      - {name: Awareness, group: tofu}      # tofu | mofu | bofu
    exits: [Lost, Disqualified, Churned]    # states outside the stage order
    allow: {skip: true, regress: false, loop: false}   # these are the defaults
    loop: {from: Enjoy, to: Buy}   # required with allow.loop
    scores:
      fit:
        attributes:                # firmographic points, applied once per field: on the
          - field: industry        # first event whose account carries that field
            cases:                 # first matching case gives its points (else 0)
              - {in: [software, fintech], points: 10}
          - field: employee_count
            cases: [{gte: 200, lt: 5000, points: 15}]
      engagement:
        half_life_days: 14         # optional decay: value * 0.5 ** (days / half_life)
        thresholds:                # fire when the score crosses `at` upward in one event
          - {at: 50, effect: {sales_ready: true}}    # or {move_to: Stage}: see below
    sales_ready:                   # optional: after each event, sets sales_ready when true
      stage: {at_least: Evaluation}
      score: {name: engagement, gte: 40}           # one condition or a list
    account_rule: {kind: furthest}  # or {kind: quorum, stage: Engagement, contacts: 2}
    rules:
      - name: pricing-page-interest
        priority: 10               # lower first; equal priorities keep file order
        once: false                # true: applies at most once per lead
        when: {...}
        then: {...}

``when`` (every part given must hold; an empty ``when`` matches every event):

- ``type``: a touchpoint type or a list (built-in types, or ``custom:<name>``).
- ``channel``: a channel or a list.
- ``properties`` / ``utm`` / ``account``: ``{key: condition}``. Property keys may be
  dotted paths into nested objects. A condition is a mapping of operators that
  must all hold: ``eq``, ``ne``, ``in``, ``not_in`` (lists), ``gt``, ``gte``, ``lt``,
  ``lte`` (numbers, or strings compared as strings), ``regex`` (searched in a
  string), ``exists`` (bool). Shorthand: ``key: value`` is ``{eq: value}`` and
  ``key: [a, b]`` is ``{in: [a, b]}``. A missing key fails every operator but
  ``exists: false``. ``eq``/``in`` never match across kinds (``1`` is not ``"1"``
  nor ``true``).
- ``count``: ``{at_least: 3, within_days: 14, type?, properties?}``: this event and
  the lead's history events in ``[occurred_at - within_days, occurred_at]`` that
  match ``type`` and ``properties`` (both default to the rule's own) number at
  least ``at_least``.
- ``stage`` (before the event): ``in`` / ``not_in`` (stages or exits), ``at_least: S``
  (in S or a later stage), ``before: S`` (not in the funnel yet, or in an earlier
  stage), ``entered: bool`` (in any stage or exit). Exits are neither at least nor
  before any stage.
- ``score``: ``{name, gt?, gte?, lt?, lte?}`` or a list, on the decayed value before
  the event.

``then``: any of ``move_to: Stage`` or ``exit: ExitState``, ``score: {name: points}``
(points may be negative), ``sales_ready: true|false``.

A rule whose condition cannot be evaluated on the event (``regex`` on a number,
``gte: 10`` on a string) is skipped and reported in :attr:`StepResult.skipped`.

One event, in this order: firmographic attributes; every rule in priority order,
all conditions seeing the state from before the event; thresholds (lowest first);
the ``sales_ready`` condition (unless a rule or threshold set ``sales_ready`` in
this event). At most one stage move per event: the first effective one wins (a
no-op or refused move does not count). A move is:

- from no stage: ``entered`` (exits are ignored until the lead is in a stage);
- to an exit: ``exited``; from an exit to a stage: ``reentered``;
- one stage forward: ``advanced``; further forward: ``skipped`` (refused unless
  ``allow.skip``);
- backward to ``loop.to`` from ``loop.from`` or a later stage: ``looped`` (with
  ``allow.loop``); any other backward move: ``regressed`` (refused unless
  ``allow.regress``).

A threshold is crossed in the event that takes the score from below ``at`` to
``at`` or more: that event reports a ``threshold`` change and applies the
``sales_ready`` effect, once per crossing, and its ``move_to`` (rule: the
threshold's name). An event moves a lead at most once: when a rule already moved
the lead in the crossing event, the threshold's move is deferred (a
``threshold:<score>:<at>:pending`` mark in ``fired_once``) to the lead's next event,
even one that matches no rule, if the score is still at or above ``at``. Taken or
refused, it is then done until the next crossing, so a rule's later regress or loop
is never undone. Threshold moves only go forward from a stage (or enter the
funnel): never out of an exit, never back.

Scores are kept as of ``scores_as_of`` and decay at evaluation time; when an event
changes a score, every score is rebased to the event time and the decay since the
last rebase is reported as ``score`` changes with rule ``decay`` (so the deltas of
the changes add up to the stored values).

Every number in a file must be finite (``.nan``, ``.inf`` are refused). Every error
loading a file is a :class:`FunnelDefinitionError` naming the place, e.g.
``b2b.yaml:14: rules.2.then.move_to: unknown stage 'Oportunity'`` (list indices
count from 0).
"""

from __future__ import annotations

from leadstage.funnels._engine import Funnel, FunnelSource
from leadstage.funnels._loader import load_funnels, load_presets, parse_funnel
from leadstage.funnels._model import (
    AccountRule,
    Change,
    ChangeKind,
    EventView,
    FunnelDefinitionError,
    LeadState,
    StepResult,
    TransitionKind,
)

#: The funnel used when a request names none.
DEFAULT_FUNNEL = "b2b-six-stage"

__all__ = [
    "DEFAULT_FUNNEL",
    "AccountRule",
    "Change",
    "ChangeKind",
    "EventView",
    "Funnel",
    "FunnelDefinitionError",
    "FunnelSource",
    "LeadState",
    "StepResult",
    "TransitionKind",
    "load_funnels",
    "load_presets",
    "parse_funnel",
]
