"""The engine's lanes: batches fetched to be folded at once never share a partition."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from leadstage.settings import EngineSettings
from leadstage.transport.base import AssignmentListener, Record, TopicPartition
from leadstage_engine.consumer import StageEngine
from leadstage_engine.reload import LiveFunnels

TOPIC = "t.touchpoints.v1"


class BufferedSource:
    """Hands out buffered records as aiokafka does: one partition's buffer before the
    next, and only the partitions not excluded."""

    def __init__(self, buffered: dict[int, int]) -> None:
        self.buffered = {
            p: [Record(TOPIC, p, offset, b"lead", b"{}") for offset in range(count)]
            for p, count in buffered.items()
        }
        self.calls: list[tuple[int, set[TopicPartition]]] = []

    async def start(self, listener: AssignmentListener) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def getmany(
        self,
        *,
        timeout_ms: int,
        max_records: int,
        excluding: Collection[TopicPartition] = (),
    ) -> list[Record]:
        self.calls.append((timeout_ms, set(excluding)))
        taken: list[Record] = []
        for partition in sorted(self.buffered):
            if TopicPartition(TOPIC, partition) in excluding:
                continue
            buffer = self.buffered[partition]
            more = buffer[: max_records - len(taken)]
            del buffer[: len(more)]
            taken += more
            if len(taken) == max_records:
                break
        return taken

    async def committed(self, offsets: Any) -> None:
        return None

    async def ping(self) -> None:
        return None


def engine(source: BufferedSource, *, lanes: int, batch: int) -> StageEngine:
    settings = EngineSettings(batch_lanes=lanes, batch_max_records=batch, poll_timeout_ms=200)
    sessions = async_sessionmaker()
    return StageEngine(settings, sessions, source, cast(Any, None), LiveFunnels(settings, sessions))


def partitions(batch: list[Record]) -> set[int]:
    return {record.partition for record in batch}


async def test_each_lane_takes_partitions_no_other_lane_has() -> None:
    source = BufferedSource({0: 5, 1: 2, 2: 4, 3: 1})

    lanes = await engine(source, lanes=2, batch=4)._fetch_lanes()

    assert [len(lane) for lane in lanes] == [4, 4]
    assert partitions(lanes[0]) == {0}
    assert partitions(lanes[1]) == {1, 2}
    # Each partition's records in offset order, from where the source stood.
    assert [r.offset for r in lanes[1] if r.partition == 2] == [0, 1]
    # Only the first fetch waits; the second leaves out what the first took.
    assert source.calls == [(200, set()), (0, {TopicPartition(TOPIC, 0)})]


async def test_no_more_lanes_than_configured_nor_than_partitions_with_records() -> None:
    source = BufferedSource({0: 3, 1: 3, 2: 3})
    assert [partitions(lane) for lane in await engine(source, lanes=2, batch=3)._fetch_lanes()] == [
        {0},
        {1},
    ]

    lonely = BufferedSource({5: 2})
    lanes = await engine(lonely, lanes=4, batch=10)._fetch_lanes()
    assert [partitions(lane) for lane in lanes] == [{5}]
    assert len(lonely.calls) == 2  # the second fetch found nothing else: no third


async def test_one_lane_is_one_batch() -> None:
    source = BufferedSource({0: 2, 1: 2})
    lanes = await engine(source, lanes=1, batch=3)._fetch_lanes()
    assert [len(lane) for lane in lanes] == [3]
    assert len(source.calls) == 1


async def test_nothing_fetched_is_no_lane() -> None:
    assert await engine(BufferedSource({}), lanes=2, batch=3)._fetch_lanes() == []


async def test_a_lane_that_fails_for_good_raises_its_own_error_and_stops_the_other() -> None:
    cancelled: list[int] = []

    class OneLaneFails(StageEngine):
        async def _process_with_retry(self, records: list[Record]) -> None:
            if records[0].partition == 1:
                raise OSError("database gone")
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(records[0].partition)
                raise

    settings = EngineSettings(batch_lanes=2)
    sessions = async_sessionmaker()
    failing = OneLaneFails(
        settings, sessions, BufferedSource({}), cast(Any, None), LiveFunnels(settings, sessions)
    )
    lanes = [[Record(TOPIC, 0, 0, b"a", b"{}")], [Record(TOPIC, 1, 0, b"b", b"{}")]]

    with pytest.raises(OSError, match="database gone"):
        await failing._fold_lanes(lanes)
    assert cancelled == [0]
