"""Ingest's per-key moving window: at most the key's rate of events in any one second."""

from __future__ import annotations

import pytest

from leadstage.credentials import Source
from leadstage.http import ApiError
from leadstage_ingest.service import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def admitted(limits: RateLimits, source: Source, events: int) -> bool:
    try:
        await limits.take(source, events, retry_after=5)
    except ApiError as error:
        refusal = (error.status_code, error.headers)
    else:
        return True
    assert refusal == (429, {"Retry-After": "5"})
    return False


async def test_a_key_gets_its_rate_per_moving_second() -> None:
    clock = Clock()
    limits = RateLimits(1000, clock=clock)
    source = Source(key_id=1, name="web", rate_limit_per_second=10)
    assert await admitted(limits, source, 4)  # t=0.0: 4 in the window
    clock.now += 0.5
    assert await admitted(limits, source, 6)  # t=0.5: 10
    assert not await admitted(limits, source, 1)  # 11 > 10
    clock.now += 0.5  # t=1.0: the 4 of t=0.0 left the window; 6 remain
    assert await admitted(limits, source, 4)  # 10
    assert not await admitted(limits, source, 1)
    clock.now += 0.5  # t=1.5: the 6 of t=0.5 left; 4 remain
    assert not await admitted(limits, source, 7)  # 11: refused, and not counted
    assert await admitted(limits, source, 6)  # 10


async def test_keys_are_separate() -> None:
    clock = Clock()
    limits = RateLimits(3, clock=clock)
    small = Source(key_id=1, name="web")  # no rate of its own: the default, 3
    other = Source(key_id=2, name="crm")
    assert await admitted(limits, small, 3)
    assert not await admitted(limits, small, 1)
    assert await admitted(limits, other, 3)  # its own window


async def test_a_batch_over_the_whole_rate_is_admitted_alone_then_the_key_waits() -> None:
    clock = Clock()
    limits = RateLimits(3, clock=clock)
    source = Source(key_id=1, name="web")
    assert await admitted(limits, source, 1)
    assert not await admitted(limits, source, 4)  # over the rate, and the window holds 1
    clock.now += 1.0  # the 1 left the window
    assert await admitted(limits, source, 4)  # alone in an empty window: never refused forever
    clock.now += 1.3
    assert not await admitted(limits, source, 1)  # 4 events at 3/s hold the window 4/3 s
    clock.now += 0.04
    assert await admitted(limits, source, 3)


async def test_oversized_batches_keep_the_key_within_its_rate_on_average() -> None:
    clock = Clock()
    limits = RateLimits(10, clock=clock)
    source = Source(key_id=1, name="web")
    admitted_events = 0
    for _ in range(100):  # a 500-event batch every 0.1 s for 10 s
        if await admitted(limits, source, 500):
            admitted_events += 500
        clock.now += 0.1
    assert admitted_events == 500  # 10 s at 10 events/s: one batch, not one per second


async def test_the_refusal_names_the_key_and_its_rate() -> None:
    limits = RateLimits(2, clock=Clock())
    await limits.take(Source(key_id=7, name="ads"), 2, retry_after=9)
    with pytest.raises(ApiError) as refused:
        await limits.take(Source(key_id=7, name="ads"), 1, retry_after=9)
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "9"}
    assert refused.value.code == "rate_limited"
    assert "Write key 7 is over 2 events per second." in str(refused.value.message)
