"""A failed long-running task stops the process once; a cancelled or finished one does not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from leadstage.supervision import TaskFailures


class Stops:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def test_a_task_that_fails_stops_the_process_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stops = Stops()
    failures = TaskFailures(stops)
    task = failures.watch(asyncio.create_task(fail("relay broke"), name="outbox-relay"))
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert failures.failed
    assert stops.count == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "outbox-relay" in record.getMessage()
    assert record.exc_info is not None
    assert "relay broke" in str(record.exc_info[1])


async def test_only_the_first_failure_stops_the_process() -> None:
    stops = Stops()
    failures = TaskFailures(stops)
    tasks = [failures.watch(asyncio.create_task(fail(f"task {n}"))) for n in range(3)]
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert stops.count == 1


async def test_a_task_that_returns_or_is_cancelled_is_not_a_failure() -> None:
    stops = Stops()
    failures = TaskFailures(stops)
    finished = failures.watch(asyncio.create_task(asyncio.sleep(0)))
    cancelled = failures.watch(asyncio.create_task(asyncio.sleep(60)))
    await finished
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    await asyncio.sleep(0)
    assert not failures.failed
    assert stops.count == 0
