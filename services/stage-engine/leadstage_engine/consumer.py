"""The stage engine's consume loop.

Per batch: ``getmany`` -> dead-letter unreadable records (producer flushed)
-> one PostgreSQL transaction with the new state and the next offsets ->
tell Kafka the offsets for lag monitoring. PostgreSQL is the source of truth
for positions: on assignment the consumer seeks to what it stored there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError

from leadstage import dlq
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.settings import EngineSettings
from leadstage.transport.base import (
    OutgoingRecord,
    Publisher,
    Record,
    RecordSource,
    TopicPartition,
    TransportUnavailableError,
)
from leadstage_engine.accounts import sweep_memberships
from leadstage_engine.processing import (
    BatchOutcome,
    Rejection,
    load_offsets,
    next_offsets,
    store_offsets,
    sweep_merges,
)
from leadstage_engine.reload import LiveFunnels, apply_with_live_funnels

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY_SECONDS = 30.0
MAX_ATTEMPTS = 6


def is_poison(error: DBAPIError) -> bool:
    """PostgreSQL (or the driver encoding a value for it) refused the data itself:
    SQLSTATE class 22, "data exception". Retrying the same record never helps."""
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return isinstance(error, DataError) or str(sqlstate).startswith("22")


def _is_refusal(error: DBAPIError) -> bool:
    """An error about this record rather than the connection (after retries ran out)."""
    return not error.connection_invalidated and not isinstance(error.orig, OSError)


class StageEngine:
    def __init__(
        self,
        settings: EngineSettings,
        sessions: SessionFactory,
        source: RecordSource,
        dead_letters: Publisher,
        funnels: LiveFunnels,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._source = source
        self._dead_letters = dead_letters
        self._funnels = funnels
        self._batch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._next_sweep = 0.0  # monotonic time; the first sweep looks at every link
        self._links_since: datetime | None = None
        self._merges_since: datetime | None = None
        self.processed = 0

    # -- AssignmentListener -------------------------------------------------
    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        async with unit_of_work(self._sessions) as session:
            stored = await load_offsets(session, self._settings.consumer_group, partitions)
        self._assigned |= partitions
        return stored

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        # The batch in progress holds the lock: waiting for it means that batch
        # commits before another member takes the partitions over. A batch fetched
        # before the revoke but not started yet drops the revoked partitions.
        async with self._batch_lock:
            self._assigned -= partitions
            logger.info("revoked partitions=%s", sorted(partitions))

    # -- lifecycle ----------------------------------------------------------
    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._source.start(self)
        logger.info("stage engine consuming topic=%s", self._settings.touchpoints_topic)
        try:
            while not self._stopping.is_set():
                lanes = await self._fetch_lanes()
                if lanes:
                    async with self._batch_lock:
                        await self._fold_lanes(lanes)
                if time.monotonic() >= self._next_sweep:
                    async with self._batch_lock:
                        await self.sweep()
        finally:
            # The loop only exits between batches: the last batch is committed. The
            # producer (shared with the outbox relay) is flushed by the app.
            await self._source.stop()
            logger.info("stage engine stopped after %s records", self.processed)

    async def _fetch_lanes(self) -> list[list[Record]]:
        """Up to ``batch_lanes`` batches that share no partition, folded at once.

        Each lane is its own transaction over its own partitions, with their offsets, so
        a partition's records stay in order and exactly-once as with one lane. Lanes
        folding at once are what several engine processes already are to PostgreSQL
        (their locks are taken in one global order, see docs/architecture.md). While one
        lane waits for the database, another runs: with one lane the engine process
        was idle about 40% of the time. The first batch waits for records as before;
        the others take what is already fetched, from other partitions. A lane's batch
        keeps the records of one or two partitions, as one ``getmany`` gives them: a
        stretch of one partition holds more events per lead than records of every
        partition at once, and per-lead work is most of a batch's cost."""
        batch = self._settings.batch_max_records
        first = await self._source.getmany(
            timeout_ms=self._settings.poll_timeout_ms, max_records=batch
        )
        if not first:
            return []
        lanes = [first]
        taken = {record.topic_partition for record in first}
        while len(lanes) < self._settings.batch_lanes:
            more = await self._source.getmany(timeout_ms=0, max_records=batch, excluding=taken)
            if not more:
                break
            lanes.append(more)
            taken |= {record.topic_partition for record in more}
        return lanes

    async def _fold_lanes(self, lanes: list[list[Record]]) -> None:
        """Fold the lanes at once. If one fails for good, the others are cancelled
        (rolled back, so refolded after the restart) and its own error is raised."""
        if len(lanes) == 1:
            await self._process_with_retry(lanes[0])
            return
        try:
            async with asyncio.TaskGroup() as running:
                for lane in lanes:
                    running.create_task(self._process_with_retry(lane))
        except ExceptionGroup as failed:
            if len(failed.exceptions) == 1:
                raise failed.exceptions[0] from None
            raise

    async def _process_with_retry(self, records: list[Record]) -> None:
        delay = 0.5
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await self.process(self._still_assigned(records))
                return
            except DBAPIError as error:
                if is_poison(error):
                    # PostgreSQL refuses some record's content: find it, quarantine
                    # it, keep consuming.
                    await self._isolate_poison(records)
                    return
                failure: Exception = error
            except (OSError, ConnectionError, TransportUnavailableError) as error:
                failure = error
            if self._stopping.is_set():
                raise failure
            logger.warning(
                "batch of %s records failed (attempt %s of %s: %r); retrying in %.1fs",
                len(records),
                attempt,
                MAX_ATTEMPTS,
                failure,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
        # Still failing: either PostgreSQL is down (processing record by record fails
        # too, the process exits and its supervisor restarts it from the stored
        # offsets) or one record fails in a way we did not foresee (it is isolated).
        await self._isolate_poison(records)

    async def sweep(self) -> None:
        """Apply the identity merges, and refold the accounts of leads attached, that
        were committed after the events that caused them were folded (ingest commits
        just after the event is produced, so the engine can fold the event first). A
        failure is logged and the sweep tried again later."""
        self._next_sweep = time.monotonic() + self._settings.sweep_seconds
        try:
            # The registry's active versions, as a batch would fold with (reload.py).
            async with unit_of_work(self._sessions) as session:
                _, self._merges_since = await sweep_merges(
                    session,
                    (await self._funnels.begin_batch(session)).funnels,
                    outbox_topic=self._settings.lead_stage_changed_topic,
                    account_topic=self._settings.account_stage_changed_topic,
                    since=self._merges_since,
                )
            async with unit_of_work(self._sessions) as session:
                _, self._links_since = await sweep_memberships(
                    session,
                    (await self._funnels.begin_batch(session)).funnels,
                    self._settings.account_stage_changed_topic,
                    since=self._links_since,
                )
        except (SQLAlchemyError, OSError) as error:
            logger.warning("merge and account sweep failed (%r); retrying later", error)

    def _still_assigned(self, records: list[Record]) -> list[Record]:
        """Drop records of partitions revoked while the batch waited for the lock."""
        return [r for r in records if r.topic_partition in self._assigned]

    async def process(self, records: Sequence[Record]) -> BatchOutcome:
        async with unit_of_work(self._sessions) as session:
            # apply_batch with the registry's active versions (see reload.py).
            outcome = await apply_with_live_funnels(
                session,
                records,
                self._funnels,
                consumer_group=self._settings.consumer_group,
                outbox_topic=self._settings.lead_stage_changed_topic,
                account_topic=self._settings.account_stage_changed_topic,
            )
            if outcome.rejected:
                # Before the commit: if the dead-letter write fails, the batch is
                # retried rather than the bad records silently skipped.
                await self._dead_letter(outcome.rejected)
        await self._source.committed(outcome.next_offsets)
        self.processed += len(records)
        topics, partitions, offsets = offset_ranges(records)
        logger.info(
            "committed batch topic=%s partition=%s offset=%s records=%s stored=%s "
            "duplicates=%s transitions=%s account_transitions=%s rejected=%s",
            topics,
            partitions,
            offsets,
            len(records),
            outcome.stored,
            outcome.duplicates,
            outcome.transitions,
            outcome.account_transitions,
            len(outcome.rejected),
        )
        return outcome

    async def _isolate_poison(self, records: Sequence[Record]) -> None:
        for record in self._still_assigned(list(records)):
            try:
                await self.process([record])
            except DBAPIError as error:
                if not is_poison(error) and not _is_refusal(error):
                    raise
                rejection = Rejection(record, "unprocessable", None, str(error.orig))
                await self._dead_letter([rejection])
                async with unit_of_work(self._sessions) as session:
                    await store_offsets(
                        session, self._settings.consumer_group, next_offsets([record])
                    )

    async def _dead_letter(self, rejected: Sequence[Rejection]) -> None:
        for rejection in rejected:
            record = rejection.record
            logger.warning(
                "dead-lettered topic=%s partition=%s offset=%s kind=%s field=%s reason=%s",
                record.topic,
                record.partition,
                record.offset,
                rejection.error_kind,
                rejection.field,
                rejection.message,
            )
        await self._dead_letters.publish(
            self._settings.dead_letter_topic,
            [dead_letter_record(r, stage="stage-engine") for r in rejected],
        )


def dead_letter_record(rejection: Rejection, *, stage: str) -> OutgoingRecord:
    record = rejection.record
    reason = {
        "error_kind": rejection.error_kind,
        "field": rejection.field,
        "message": rejection.message,
        "rejected_by": stage,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }
    return dlq.dead_letter(record.key or b"", record.value, reason)  # the original bytes


def offset_ranges(records: Sequence[Record]) -> tuple[str, str, str]:
    """A batch's topics, partitions and offset ranges for its log line.

    ``getmany`` returns records of several partitions in one batch, so the first and
    the last record's offsets belong to different partitions: each partition gets its
    own range, in the order the batch first reached it, e.g. partitions ``0,2`` with
    offsets ``0:17..42,2:5..9``. A batch of one partition keeps the plain form
    (``partition=4 offset=10..12``)."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for record in records:
        span = ranges.setdefault((record.topic, record.partition), [record.offset, record.offset])
        span[0] = min(span[0], record.offset)
        span[1] = max(span[1], record.offset)
    topics = ",".join(dict.fromkeys(topic for topic, _ in ranges))
    if len(ranges) == 1:
        ((_, partition), (low, high)) = next(iter(ranges.items()))
        return topics, str(partition), f"{low}..{high}"
    several_topics = "," in topics

    def name(topic: str, partition: int) -> str:
        return f"{topic}:{partition}" if several_topics else str(partition)

    partitions = ",".join(name(*key) for key in ranges)
    offsets = ",".join(f"{name(*key)}:{low}..{high}" for key, (low, high) in ranges.items())
    return topics, partitions, offsets
