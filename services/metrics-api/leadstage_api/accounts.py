"""Accounts (buying groups): where an account stands in each funnel, from its contacts.

The stage engine keeps each account's stage, contacts per stage and transition
history (``account_stages``, ``account_transitions``, ``account_contacts``). The
rolled-up scores are computed here, on read, from the contacts' own scores: a
stored roll-up would have to be rewritten on nearly every contact event, and it
is a function of ``lead_stages`` anyway.

Score roll-up, per named score of the funnel: every contact's score is decayed to
one instant, ``scores_as_of`` (the latest time any contact's scores were rebased,
so no contact's score is taken before its own last change), then ``sum`` and
``max`` are taken over the contacts that have the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.credentials import SCOPE_READ_LEADS, Caller
from leadstage.db.models import Account, AccountContact, AccountStage, AccountTransition, LeadStage
from leadstage.funnels import DEFAULT_FUNNEL, Funnel, LeadState
from leadstage.http import ERROR_RESPONSES, ApiError, ErrorEnvelope
from leadstage_api.dependencies import Session, require_scope
from leadstage_api.router import check_funnel

PAGE_MAX = 500

# -- schemas ------------------------------------------------------------------------------


class AccountRuleView(BaseModel):
    kind: str = Field(description="furthest, or quorum.")
    stage: str | None = Field(default=None, description="The quorum's stage.")
    contacts: int | None = Field(
        default=None, description="Contacts needed at the quorum's stage or beyond."
    )


class StageContacts(BaseModel):
    stage: str = Field(description="A stage (in funnel order) or an exit state.")
    contacts: int


class ScoreRollup(BaseModel):
    score: str
    sum: float = Field(description="Sum of the contacts' scores, decayed to `scores_as_of`.")
    max: float = Field(description="The highest contact score, decayed to `scores_as_of`.")
    contacts: int = Field(description="Contacts that have this score.")


class AccountFunnelView(BaseModel):
    funnel: str
    funnel_version: int | None
    account_rule: AccountRuleView
    stage: str | None = Field(description="None while no contact counts for a stage.")
    stage_entered_at: datetime | None
    contacts: int = Field(description="Contacts the engine has seen in this funnel.")
    contacts_per_stage: list[StageContacts] = Field(
        description="Every stage in funnel order, then the exit states."
    )
    contacts_without_stage: int = Field(description="Contacts with touches but no stage yet.")
    scores: list[ScoreRollup]
    scores_as_of: datetime | None


class AccountTransitionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int = Field(description="Position in the account's history in this funnel, from 1.")
    from_stage: str | None
    to_stage: str | None = Field(description="None when no contact counts any more.")
    kind: str = Field(description="entered, advanced, skipped, regressed, looped or exited.")
    lead_id: str = Field(description="The contact whose event moved the account.")
    source: str
    event_id: str
    event_type: str
    occurred_at: datetime
    change_id: str = Field(description="The change_id of its AccountStageChanged event.")


class AccountHistory(BaseModel):
    funnel: str
    transitions: list[AccountTransitionView]
    next_cursor: int | None = Field(description="Pass as `history_after`; None on the last page.")


class ContactStage(BaseModel):
    funnel: str
    stage: str | None
    sales_ready: bool


class AccountContactView(BaseModel):
    lead_id: str
    stages: list[ContactStage]


class AccountView(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "domain:example.com",
                    "domain": "example.com",
                    "name": "Example GmbH",
                    "industry": "software",
                    "employee_count": 250,
                    "country": "DE",
                    "tier": 1,
                    "contact_count": 2,
                    "funnels": [
                        {
                            "funnel": "b2b-six-stage",
                            "funnel_version": 1,
                            "account_rule": {
                                "kind": "quorum",
                                "stage": "Engagement",
                                "contacts": 2,
                            },
                            "stage": "Action",
                            "stage_entered_at": "2026-11-20T09:15:00Z",
                            "contacts": 2,
                            "contacts_per_stage": [
                                {"stage": "Awareness", "contacts": 1},
                                {"stage": "Interest", "contacts": 0},
                                {"stage": "Action", "contacts": 0},
                                {"stage": "Engagement", "contacts": 1},
                                {"stage": "Opportunity", "contacts": 0},
                                {"stage": "Customer", "contacts": 0},
                                {"stage": "Lost", "contacts": 0},
                                {"stage": "Disqualified", "contacts": 0},
                                {"stage": "Churned", "contacts": 0},
                            ],
                            "contacts_without_stage": 0,
                            "scores": [
                                {"score": "fit", "sum": 50.0, "max": 25.0, "contacts": 2},
                                {"score": "engagement", "sum": 38.0, "max": 37.0, "contacts": 2},
                            ],
                            "scores_as_of": "2026-11-20T09:15:00Z",
                        }
                    ],
                    "contacts": [
                        {
                            "lead_id": "lead-42",
                            "stages": [
                                {
                                    "funnel": "b2b-six-stage",
                                    "stage": "Engagement",
                                    "sales_ready": False,
                                }
                            ],
                        }
                    ],
                    "contacts_next_cursor": "lead-42",
                    "history": {
                        "funnel": "b2b-six-stage",
                        "transitions": [
                            {
                                "seq": 1,
                                "from_stage": None,
                                "to_stage": "Awareness",
                                "kind": "entered",
                                "lead_id": "lead-7",
                                "source": "website",
                                "event_id": "e-1",
                                "event_type": "page_view",
                                "occurred_at": "2026-11-18T14:02:00Z",
                                "change_id": "5f0c0d0b8f9c4c7e9a1b2c3d4e5f6a7b",
                            }
                        ],
                        "next_cursor": None,
                    },
                }
            ]
        }
    )

    account_id: str
    domain: str | None = None
    name: str | None = None
    industry: str | None = None
    employee_count: int | None = None
    country: str | None = None
    tier: int | None = None
    contact_count: int = Field(description="Contacts the engine counts for this account.")
    funnels: list[AccountFunnelView] = Field(description="Every active funnel.")
    contacts: list[AccountContactView] = Field(description="A page of contacts, by lead id.")
    contacts_next_cursor: str | None = Field(
        description="Pass as `contacts_after`; None on the last page."
    )
    history: AccountHistory


# -- service ------------------------------------------------------------------------------


def roll_up_scores(
    funnel: Funnel, states: Sequence[LeadState]
) -> tuple[list[ScoreRollup], datetime | None]:
    """Per named score of the funnel: sum and max over the contacts that have it, each
    decayed to the latest time any contact's scores were rebased."""
    as_of = max((s.scores_as_of for s in states if s.scores_as_of is not None), default=None)
    rollups: list[ScoreRollup] = []
    for name in funnel.score_names:
        values = [
            state.score_at(funnel, name, as_of) if as_of is not None else state.scores[name]
            for state in states
            if name in state.scores
        ]
        if values:
            rollups.append(
                ScoreRollup(
                    score=name, sum=round(sum(values), 6), max=max(values), contacts=len(values)
                )
            )
    return rollups, as_of


async def get_account(
    session: AsyncSession,
    account_id: str,
    funnels: Sequence[Funnel],
    *,
    history_funnel: str,
    history_after: int,
    history_limit: int,
    contacts_after: str | None,
    contacts_limit: int,
) -> AccountView | None:
    """The account's state in every funnel, a page of its contacts and of its history
    in ``history_funnel``; None if the account is unknown."""
    names = [f.name for f in funnels]
    account = await session.get(Account, account_id)
    stages = {
        row.funnel: row
        for row in await session.scalars(
            select(AccountStage).where(
                AccountStage.account_id == account_id, AccountStage.funnel.in_(names)
            )
        )
    }
    contact_count = await session.scalar(
        select(func.count()).where(AccountContact.account_id == account_id)
    )
    if account is None and not stages and not contact_count:
        return None

    contact_states: dict[str, list[LeadState]] = {}
    for funnel_name, state in await session.execute(
        select(LeadStage.funnel, LeadStage.state)
        .join(AccountContact, AccountContact.lead_key == LeadStage.lead_key)
        .where(AccountContact.account_id == account_id, LeadStage.funnel.in_(names))
    ):
        contact_states.setdefault(funnel_name, []).append(LeadState.from_dict(state or {}))
    views = [
        _funnel_view(funnel, stages.get(funnel.name), contact_states.get(funnel.name, []))
        for funnel in funnels
    ]

    contact_query = select(AccountContact.lead_key).where(AccountContact.account_id == account_id)
    if contacts_after is not None:
        contact_query = contact_query.where(AccountContact.lead_key > contacts_after)
    page = list(
        await session.scalars(
            contact_query.order_by(AccountContact.lead_key).limit(contacts_limit + 1)
        )
    )
    shown = page[:contacts_limit]
    positions: dict[str, list[ContactStage]] = {lead: [] for lead in shown}
    for row in await session.scalars(
        select(LeadStage)
        .where(LeadStage.lead_key.in_(shown), LeadStage.funnel.in_(names))
        .order_by(LeadStage.lead_key, LeadStage.funnel)
    ):
        positions[row.lead_key].append(
            ContactStage(funnel=row.funnel, stage=row.stage, sales_ready=row.sales_ready)
        )

    transitions = list(
        await session.scalars(
            select(AccountTransition)
            .where(
                AccountTransition.account_id == account_id,
                AccountTransition.funnel == history_funnel,
                AccountTransition.seq > history_after,
            )
            .order_by(AccountTransition.seq)
            .limit(history_limit + 1)
        )
    )
    history = [
        AccountTransitionView(
            seq=t.seq,
            from_stage=t.from_stage,
            to_stage=t.to_stage,
            kind=t.kind,
            lead_id=t.lead_key,
            source=t.source,
            event_id=t.event_id,
            event_type=t.event_type,
            occurred_at=t.occurred_at,
            change_id=t.change_id,
        )
        for t in transitions[:history_limit]
    ]
    return AccountView(
        account_id=account_id,
        **_firmographics(account),
        contact_count=contact_count or 0,
        funnels=views,
        contacts=[AccountContactView(lead_id=lead, stages=positions[lead]) for lead in shown],
        contacts_next_cursor=shown[-1] if len(page) > contacts_limit else None,
        history=AccountHistory(
            funnel=history_funnel,
            transitions=history,
            next_cursor=history[-1].seq if len(transitions) > history_limit else None,
        ),
    )


def _firmographics(account: Account | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {
        "domain": account.domain,
        "name": account.name,
        "industry": account.industry,
        "employee_count": account.employee_count,
        "country": account.country,
        "tier": account.tier,
    }


def _funnel_view(
    funnel: Funnel, row: AccountStage | None, states: Sequence[LeadState]
) -> AccountFunnelView:
    counts = dict(row.contacts_by_stage) if row is not None else {}
    exits = list(funnel.spec.exits)
    scores, as_of = roll_up_scores(funnel, states)
    rule = funnel.account_rule
    return AccountFunnelView(
        funnel=funnel.name,
        funnel_version=row.funnel_version if row is not None else funnel.version,
        account_rule=AccountRuleView(kind=rule.kind, stage=rule.stage, contacts=rule.contacts),
        stage=row.stage if row is not None else None,
        stage_entered_at=row.stage_entered_at if row is not None else None,
        contacts=row.contacts if row is not None else 0,
        contacts_per_stage=[
            StageContacts(stage=stage, contacts=int(counts.get(stage, 0)))
            for stage in (*funnel.stages, *exits)
        ]
        # A stage a newer funnel version dropped, with contacts still in it.
        + [
            StageContacts(stage=stage, contacts=int(n))
            for stage, n in sorted(counts.items())
            if stage not in funnel.stages and stage not in exits
        ],
        contacts_without_stage=row.contacts_without_stage if row is not None else 0,
        scores=scores,
        scores_as_of=as_of,
    )


# -- routes -------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.get(
    "/accounts/{account_id}",
    summary="An account's stage per funnel, contacts, rolled-up scores and history",
    description="The account (buying group) in every active funnel: its stage by the "
    "funnel's account rule, contacts per stage, its contacts' scores rolled up (sum and "
    "max, decayed to one instant), a page of its contacts (follow `contacts_next_cursor`) "
    "and a page of its stage history in `funnel` (follow `history.next_cursor`).",
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorEnvelope, "description": "The token lacks the leads:read scope."},
        404: {"model": ErrorEnvelope, "description": "Unknown account, or unknown funnel."},
    },
)
async def read_account(
    request: Request,
    session: Session,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_LEADS))],
    account_id: Annotated[
        str, Path(max_length=262, description="The account id (e.g. `domain:example.com`).")
    ],
    funnel: Annotated[
        str, Query(max_length=100, description="The funnel whose history is listed.")
    ] = DEFAULT_FUNNEL,
    history_after: Annotated[
        int, Query(ge=0, description="History cursor: list transitions after this seq.")
    ] = 0,
    history_limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    contacts_after: Annotated[
        str | None, Query(max_length=262, description="Contacts cursor: a lead id.")
    ] = None,
    contacts_limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> AccountView:
    check_funnel(request, funnel)
    funnels: dict[str, Funnel] = request.app.state.funnels
    view = await get_account(
        session,
        account_id,
        list(funnels.values()),
        history_funnel=funnel,
        history_after=history_after,
        history_limit=min(history_limit, request.app.state.settings.history_page_max),
        contacts_after=contacts_after,
        contacts_limit=contacts_limit,
    )
    if view is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No account {account_id!r}.")
    return view
