"""A small typed client for the metrics API, for internal services (sync and async).

    from leadstage.client import LeadStageClient

    with LeadStageClient("http://leadstage-api:8080", token="lst_...") as leadstage:
        lead = leadstage.get_lead("lead-42")
        if lead.sales_ready:
            ...

Answers 503 (and connection failures) are retried with exponential backoff, every
call has a timeout, and a missing lead is ``None`` rather than an exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel


class LeadStageError(Exception):
    """The metrics API refused a request; ``code`` and ``details`` come from its envelope."""

    def __init__(self, status: int, code: str, message: str, details: list[Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.details = details


class Transition(BaseModel):
    from_stage: str | None
    to_stage: str
    kind: str
    rule: str
    source: str
    event_id: str
    event_type: str
    occurred_at: datetime


class Lead(BaseModel):
    lead_id: str
    funnel: str
    funnel_version: int | None = None
    stage: str | None
    stage_entered_at: datetime | None
    sales_ready: bool = False
    scores: dict[str, float] = {}
    scores_as_of: datetime | None = None
    first_touch_at: datetime
    last_touch_at: datetime
    transitions: list[Transition]


class LeadSummary(BaseModel):
    lead_id: str
    funnel: str
    stage: str | None
    stage_entered_at: datetime | None
    sales_ready: bool
    last_touch_at: datetime


class AccountFunnel(BaseModel):
    funnel: str
    funnel_version: int | None = None
    account_rule: dict[str, Any]
    stage: str | None
    stage_entered_at: datetime | None
    contacts: int
    contacts_per_stage: list[dict[str, Any]]
    contacts_without_stage: int
    scores: list[dict[str, Any]]
    scores_as_of: datetime | None


class AccountTransition(BaseModel):
    seq: int
    from_stage: str | None
    to_stage: str | None
    kind: str
    lead_id: str
    source: str
    event_id: str
    event_type: str
    occurred_at: datetime
    change_id: str


class AccountHistory(BaseModel):
    funnel: str
    transitions: list[AccountTransition]
    next_cursor: int | None


class AccountContact(BaseModel):
    lead_id: str
    stages: list[dict[str, Any]]


class Account(BaseModel):
    account_id: str
    domain: str | None = None
    name: str | None = None
    industry: str | None = None
    employee_count: int | None = None
    country: str | None = None
    tier: int | None = None
    contact_count: int
    funnels: list[AccountFunnel]
    contacts: list[AccountContact]
    contacts_next_cursor: str | None
    history: AccountHistory

    def funnel(self, name: str) -> AccountFunnel | None:
        return next((f for f in self.funnels if f.funnel == name), None)


_Model = TypeVar("_Model", bound=BaseModel)

RETRIED = (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError)


def _raise_for(response: httpx.Response) -> None:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "http_error", "message": response.text[:200], "details": []}
    raise LeadStageError(
        response.status_code,
        error.get("code", ""),
        error.get("message", ""),
        error.get("details", []),
    )


class _Base:
    def __init__(self, retries: int, backoff: float) -> None:
        self._retries = retries
        self._backoff = backoff

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), 30.0)
        return float(self._backoff * 2**attempt)

    def _should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        return attempt < self._retries and (response is None or response.status_code == 503)


class LeadStageClient(_Base):
    """Blocking client."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff)
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.get(
                    path, params={k: v for k, v in params.items() if v is not None}
                )
            except RETRIED:
                if not self._should_retry(attempt, None):
                    raise
            if response is not None and not self._should_retry(attempt, response):
                return response
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def get_lead(self, lead_id: str, *, funnel: str | None = None) -> Lead | None:
        response = self._get(f"/v1/leads/{lead_id}", {"funnel": funnel})
        return _lead(response)

    def get_account(
        self,
        account_id: str,
        *,
        funnel: str | None = None,
        history_after: int | None = None,
        history_limit: int | None = None,
        contacts_after: str | None = None,
        contacts_limit: int | None = None,
    ) -> Account | None:
        """The account's stage per funnel, contacts and a page of its history in
        ``funnel``; None for an unknown account."""
        response = self._get(
            f"/v1/accounts/{account_id}",
            _account_params(funnel, history_after, history_limit, contacts_after, contacts_limit),
        )
        return _one(response, Account)

    def find_lead(
        self,
        *,
        email: str | None = None,
        anonymous_id: str | None = None,
        funnel: str | None = None,
    ) -> Lead | None:
        response = self._get(
            "/v1/leads", {"email": email, "anonymous_id": anonymous_id, "funnel": funnel}
        )
        return _lead(response)

    def iter_leads(
        self,
        *,
        funnel: str | None = None,
        stage: str | None = None,
        sales_ready: bool | None = None,
        page_size: int = 100,
    ) -> Iterator[LeadSummary]:
        cursor: str | None = None
        while True:
            response = self._get(
                "/v1/leads",
                {
                    "funnel": funnel,
                    "stage": stage,
                    "sales_ready": sales_ready,
                    "cursor": cursor,
                    "limit": page_size,
                },
            )
            page = _page(response)
            yield from (LeadSummary.model_validate(lead) for lead in page["leads"])
            cursor = page["next_cursor"]
            if cursor is None:
                return


class AsyncLeadStageClient(_Base):
    """asyncio client, same calls as :class:`LeadStageClient`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.get(
                    path, params={k: v for k, v in params.items() if v is not None}
                )
            except RETRIED:
                if not self._should_retry(attempt, None):
                    raise
            if response is not None and not self._should_retry(attempt, response):
                return response
            await asyncio.sleep(self._delay(attempt, response))
            attempt += 1

    async def get_lead(self, lead_id: str, *, funnel: str | None = None) -> Lead | None:
        return _lead(await self._get(f"/v1/leads/{lead_id}", {"funnel": funnel}))

    async def get_account(
        self,
        account_id: str,
        *,
        funnel: str | None = None,
        history_after: int | None = None,
        history_limit: int | None = None,
        contacts_after: str | None = None,
        contacts_limit: int | None = None,
    ) -> Account | None:
        """As :meth:`LeadStageClient.get_account`."""
        response = await self._get(
            f"/v1/accounts/{account_id}",
            _account_params(funnel, history_after, history_limit, contacts_after, contacts_limit),
        )
        return _one(response, Account)

    async def find_lead(
        self,
        *,
        email: str | None = None,
        anonymous_id: str | None = None,
        funnel: str | None = None,
    ) -> Lead | None:
        return _lead(
            await self._get(
                "/v1/leads", {"email": email, "anonymous_id": anonymous_id, "funnel": funnel}
            )
        )


def _lead(response: httpx.Response) -> Lead | None:
    return _one(response, Lead)


def _one(response: httpx.Response, model: type[_Model]) -> _Model | None:
    if response.status_code == 404:
        details = response.json().get("error", {}).get("details", [])
        # A 404 naming a parameter (an unknown funnel) is a caller error, not "not found".
        if not any(detail.get("field") for detail in details):
            return None
    if response.status_code != 200:
        _raise_for(response)
    return model.model_validate(response.json())


def _account_params(
    funnel: str | None,
    history_after: int | None,
    history_limit: int | None,
    contacts_after: str | None,
    contacts_limit: int | None,
) -> dict[str, Any]:
    return {
        "funnel": funnel,
        "history_after": history_after,
        "history_limit": history_limit,
        "contacts_after": contacts_after,
        "contacts_limit": contacts_limit,
    }


def _page(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        _raise_for(response)
    page: dict[str, Any] = response.json()
    return page
