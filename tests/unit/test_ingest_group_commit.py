"""Ingest's group commit: who is answered when, and what stopping waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from leadstage.events import Touchpoint, TouchpointIn
from leadstage_ingest.service import Candidate, Delivery, EventOutcome, GroupCommit

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def event(lead: str) -> tuple[int, Candidate, Touchpoint]:
    touchpoint = Touchpoint.accept(
        TouchpointIn(type="page_view", occurred_at=NOW, lead_id=lead),
        source="test",
        received_at=NOW,
    )
    return 0, Candidate(raw={}, touchpoint=touchpoint), touchpoint


def accepted(valid: Sequence[tuple[int, Candidate, Touchpoint]]) -> dict[int, EventOutcome]:
    return {i: EventOutcome("accepted", event_id=tp.event_id) for i, _, tp in valid}


class HeldGroup:
    """An accept function that answers early, then holds the group until released."""

    def __init__(self, *, fail_after_delivery: bool = False) -> None:
        self.delivered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = asyncio.Event()
        self.fail_after_delivery = fail_after_delivery

    async def __call__(
        self, valid: Sequence[tuple[int, Candidate, Touchpoint]], deliver: Delivery | None
    ) -> dict[int, EventOutcome]:
        outcomes = accepted(valid)
        assert deliver is not None
        deliver(outcomes)
        self.delivered.set()
        await self.release.wait()
        self.finished.set()
        if self.fail_after_delivery:
            raise RuntimeError("the commit failed")
        return outcomes


async def test_requests_are_answered_when_the_group_delivers_not_when_it_ends() -> None:
    held = HeldGroup()
    commit = GroupCommit(held, workers=1, max_events=500)
    commit.start()
    try:
        answer = await asyncio.wait_for(commit.submit([event("a")]), timeout=5)
        assert [o.status for o in answer.values()] == ["accepted"]
        assert not held.finished.is_set()  # answered while the group still runs
    finally:
        held.release.set()
        await commit.stop()
    assert held.finished.is_set()


async def test_stopping_lets_a_group_in_progress_finish() -> None:
    held = HeldGroup()
    commit = GroupCommit(held, workers=2, max_events=500)
    commit.start()
    await commit.submit([event("a")])
    stopping = asyncio.create_task(commit.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the group, does not cancel it
    held.release.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert held.finished.is_set()


async def test_a_failure_after_the_answer_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = HeldGroup(fail_after_delivery=True)
    commit = GroupCommit(held, workers=1, max_events=500)
    commit.start()
    try:
        answer = await commit.submit([event("a")])
        assert [o.status for o in answer.values()] == ["accepted"]
        held.release.set()
        await asyncio.wait_for(held.finished.wait(), timeout=5)
        await asyncio.sleep(0)
    finally:
        await commit.stop()
    assert "failed after its events were acknowledged" in caplog.text


async def test_a_failure_before_the_answer_fails_every_request_of_the_group() -> None:
    async def failing(
        valid: Sequence[tuple[int, Candidate, Touchpoint]], deliver: Delivery | None
    ) -> dict[int, EventOutcome]:
        raise RuntimeError("the event log is down")

    commit = GroupCommit(failing, workers=1, max_events=500)
    commit.start()
    try:
        results = await asyncio.gather(
            commit.submit([event("a")]), commit.submit([event("b")]), return_exceptions=True
        )
    finally:
        await commit.stop()
    assert [str(r) for r in results] == ["the event log is down"] * 2
