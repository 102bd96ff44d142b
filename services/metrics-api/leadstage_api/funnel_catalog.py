"""``GET /v1/funnels``: the active funnel definitions, so clients (and the dashboard)
know the stage names, their order and groups without reading the YAML files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from leadstage.credentials import SCOPE_READ_METRICS, Caller
from leadstage.funnels import Funnel
from leadstage.http import ERROR_RESPONSES
from leadstage_api.dependencies import require_scope

router = APIRouter(prefix="/v1", tags=["funnels"])


class StageInfo(BaseModel):
    name: str
    group: str = Field(description="tofu, mofu or bofu.")


class FunnelInfo(BaseModel):
    name: str
    version: int
    fingerprint: str = Field(description="sha256 of the canonical definition.")
    description: str
    stages: list[StageInfo] = Field(description="In funnel order.")
    exits: list[str] = Field(description="Exit states (e.g. lost, disqualified).")
    scores: list[str] = Field(description="Named scores this funnel keeps per lead.")


class FunnelCatalog(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "default": "b2b-six-stage",
                    "funnels": [
                        {
                            "name": "aida",
                            "version": 1,
                            "fingerprint": "9c1f...",
                            "description": "Attention, Interest, Desire, Action.",
                            "stages": [
                                {"name": "Attention", "group": "tofu"},
                                {"name": "Interest", "group": "mofu"},
                                {"name": "Desire", "group": "mofu"},
                                {"name": "Action", "group": "bofu"},
                            ],
                            "exits": ["lost"],
                            "scores": ["engagement"],
                        }
                    ],
                }
            ]
        }
    )

    default: str = Field(description="The funnel endpoints use when none is named.")
    funnels: list[FunnelInfo]


def describe(funnel: Funnel) -> FunnelInfo:
    return FunnelInfo(
        name=funnel.name,
        version=funnel.version,
        fingerprint=funnel.fingerprint,
        description=funnel.description,
        stages=[StageInfo(name=stage, group=funnel.groups[stage]) for stage in funnel.stages],
        exits=sorted(funnel.exits),
        scores=list(funnel.score_names),
    )


@router.get(
    "/funnels",
    summary="The active funnel definitions",
    description="Each active funnel with its stages in order, exit states and scores.",
    responses=ERROR_RESPONSES,
)
async def list_funnels(
    request: Request,
    _: Annotated[Caller, Depends(require_scope(SCOPE_READ_METRICS))],
) -> FunnelCatalog:
    funnels: dict[str, Funnel] = request.app.state.funnels
    default = request.app.state.settings.funnels[0]
    return FunnelCatalog(
        default=default, funnels=[describe(funnels[name]) for name in sorted(funnels)]
    )
