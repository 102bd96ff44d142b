"""Ingest's domain logic: authenticate, validate, deduplicate, resolve, accept durably.

One intake batch (an HTTP request, or one ``getmany`` of the Kafka raw intake)
is one PostgreSQL transaction:

1. claim each ``event_id`` in ``ingest_dedup`` (a repeat is a duplicate);
2. resolve each event's canonical lead and account;
3. produce the accepted touchpoints, keyed by canonical lead, and wait for the
   event log's durable acknowledgement;
4. commit.

If step 3 fails the transaction rolls back: the event_ids are not claimed,
so the client's retry is accepted, and no identity change is kept. If the
process dies between 3 and 4, the retry produces again and the stage engine,
which stores each event_id once, ignores the repeat. The common group (one
identifier per event, so no merge) answers its requests between 3 and 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from fastapi import status
from sqlalchemy import delete, text
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from leadstage import dlq
from leadstage.credentials import CachedLookup, Source, find_write_key
from leadstage.db.models import IngestDedup
from leadstage.db.session import SessionFactory, unit_of_work
from leadstage.events import Account as AccountIn
from leadstage.events import Touchpoint
from leadstage.http import ApiError, ErrorDetail
from leadstage.settings import IngestSettings
from leadstage.transport.base import OutgoingRecord, Publisher, TransportUnavailableError
from leadstage_ingest import metrics, segment
from leadstage_ingest.database import ConnectionLostError, connection_lost
from leadstage_ingest.identity import (
    Alias,
    Driver,
    IdentityKey,
    attach_accounts,
    identifiers,
    lock_names,
    resolve_leads,
    single_identifier,
)
from leadstage_ingest.validation import Limits, Rejected

logger = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "rejected"]


@dataclass(frozen=True)
class EventOutcome:
    status: Outcome
    event_id: str | None = None
    lead_id: str | None = None
    kind: str | None = None
    field: str | None = None
    reason: str | None = None


@dataclass
class Candidate:
    """One incoming record on its way through a batch."""

    raw: Any
    touchpoint: Touchpoint | None = None
    rejection: Rejected | None = None
    previous_id: str | None = None  # Segment alias
    origin: Mapping[str, Any] = field(default_factory=dict)  # where it came from (DLQ)
    original: bytes | None = None  # the record's bytes as received, when known
    # When it was received (the time its checks used): a replay is read as of then.
    received_at: datetime | None = None


def limits_from(settings: IngestSettings) -> Limits:
    return Limits(
        max_event_bytes=settings.max_event_bytes,
        max_depth=settings.max_nesting_depth,
        max_properties=settings.max_properties,
        max_future=timedelta(seconds=settings.max_future_seconds),
        horizon=timedelta(days=settings.timestamp_horizon_days),
    )


class WriteKeys:
    """Write-key lookups with a short cache, so each request is not a database trip.

    A revoked key stops working within ``write_key_cache_seconds``.
    """

    def __init__(self, sessions: SessionFactory, ttl_seconds: float) -> None:
        self.lookup = CachedLookup(sessions, find_write_key, ttl_seconds)

    async def authenticate(self, secret: str | None) -> Source:
        source = await self.lookup(secret) if secret else None
        if source is None:
            metrics.REJECTED.labels("http", "unknown_write_key").inc()
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                "unauthorized",
                "A valid write key is required." if secret else "A write key is required.",
                headers={"WWW-Authenticate": 'Basic realm="leadstage"'},
            )
        return source


class RateLimits:
    """Per-key moving-window limits, in this process (each ingest replica has its own).

    A key may take at most its rate's worth of events in any one-second window (one
    request larger than that is admitted alone, into an empty window). Each
    window keeps one entry per admitted request (its time and its event count) and a
    running total, so a check costs O(1) amortised: the ``limits`` package's moving
    window, used before, stored one entry per event (100 for a batch of 100) and expired
    old entries from a worker thread, a thread hop and GIL contention on the hot path.
    """

    WINDOW_SECONDS = 1.0

    def __init__(
        self, default_per_second: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._default = default_per_second
        self._clock = clock
        self._windows: dict[int, _MovingWindow] = {}

    async def take(self, source: Source, events: int, *, retry_after: int) -> None:
        rate = source.rate_limit_per_second or self._default
        window = self._windows.get(source.key_id)
        if window is None:
            window = self._windows[source.key_id] = _MovingWindow()
        if not window.hit(self._clock(), events, limit=rate, span=self.WINDOW_SECONDS):
            raise ApiError(
                status.HTTP_429_TOO_MANY_REQUESTS,
                "rate_limited",
                f"Write key {source.key_id} is over {rate} events per second.",
                headers={"Retry-After": str(retry_after)},
            )


class _MovingWindow:
    """The admitted requests of the last ``span`` seconds: (time, events), oldest first."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def hit(self, now: float, cost: int, *, limit: int, span: float) -> bool:
        """Admit ``cost`` events at ``now`` if the window then holds at most ``limit``,
        or if the window is empty: a batch larger than the whole rate could otherwise
        never be admitted, and would be answered 429 on every retry. Such a batch stays
        in the window for as many spans as it holds rates' worth of events (500 events
        at 100/s: 5 s), so the key's average stays within its rate."""
        entries = self.entries
        while entries and entries[0][0] <= now - span:
            self.total -= entries.popleft()[1]
        if self.total + cost > limit:
            if entries:
                return False
            # Alone in an empty window: later entries wait behind it, so the deque
            # stays in expiry order.
            now += span * (cost / limit - 1)
        entries.append((now, cost))
        self.total += cost
        return True


class DeadLetters:
    """Writes rejected records to the dead-letter topic in the background.

    Bounded: when the event log is down and the queue is full, further dead
    letters are dropped and counted rather than holding memory or requests.
    """

    def __init__(self, publisher: Publisher, topic: str, *, capacity: int = 10_000) -> None:
        self._publisher = publisher
        self._topic = topic
        self._queue: asyncio.Queue[OutgoingRecord] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="dead-letters")
        return self._task

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def flush(self) -> None:
        """Wait (up to 10 s) until every queued dead letter is written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._queue.join()

    def put(self, candidate: Candidate, *, source: str | None, raw: bytes | None = None) -> None:
        rejection = candidate.rejection
        assert rejection is not None  # noqa: S101 - only rejected candidates come here
        reason = {
            "error_kind": rejection.kind,
            "field": rejection.field,
            "message": rejection.message,
            "source": source,
            "rejected_by": "ingest",
            "rejected_at": datetime.now(UTC).isoformat(),
            **candidate.origin,
        }
        if candidate.received_at is not None:
            reason["received_at"] = candidate.received_at.isoformat()
        if raw is None:
            raw = candidate.original
        value = raw if raw is not None else json.dumps(candidate.raw, default=str).encode()
        record = dlq.dead_letter((source or "").encode(), value, reason)
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            metrics.DEAD_LETTERS.labels("dropped").inc()
            logger.error("dead-letter queue full; dropped kind=%s", rejection.kind)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    await self._publisher.publish(self._topic, batch)
                    metrics.DEAD_LETTERS.labels("written").inc(len(batch))
                    for _ in batch:
                        self._queue.task_done()
                    break
                except TransportUnavailableError as error:
                    metrics.DEAD_LETTERS.labels("failed").inc(len(batch))
                    logger.warning("dead letters not written yet (%r); retrying", error)
                    await asyncio.sleep(1)


Valid = Sequence[tuple[int, Candidate, Touchpoint]]
#: Answers a group's requests before the group's work is over (see ``_accept_on_driver``).
Delivery = Callable[[Mapping[int, EventOutcome]], None]


@dataclass
class _Submission:
    valid: Valid
    done: asyncio.Future[dict[int, EventOutcome]]


class GroupCommit:
    """Concurrent requests share one transaction and one produce batch (group commit).

    Each worker takes whatever submissions are waiting (up to ``max_events``
    events) and accepts them together, so under load the database and broker
    round trips are paid once per group instead of once per request. A failure
    before the group's answer fails every request of the group, each of which then
    answers 503; one after it (the commit of a group answered early) is logged.
    """

    def __init__(
        self,
        accept: Callable[[Valid, Delivery | None], Awaitable[dict[int, EventOutcome]]],
        *,
        workers: int,
        max_events: int,
    ) -> None:
        self._accept = accept
        self._workers = workers
        self._max_events = max_events
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting: set[asyncio.Task[Any]] = set()  # workers between groups
        self._stopping = False

    def start(self) -> list[asyncio.Task[None]]:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-commit-{n}") for n in range(self._workers)
        ]
        return self._tasks

    async def stop(self) -> None:
        """Stop the workers; one in the middle of a group finishes it first (its requests
        may have been answered already, see ``Intake._accept_on_driver``)."""
        self._stopping = True
        for task in self._tasks:
            if task in self._waiting:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, valid: Valid) -> dict[int, EventOutcome]:
        if not self._tasks:  # not started (e.g. a unit test): accept directly
            return await self._accept(valid, None)
        done: asyncio.Future[dict[int, EventOutcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Submission(valid, done))  # unbounded: Intake bounds in-flight
        return await done

    async def _run(self) -> None:
        worker = asyncio.current_task()
        assert worker is not None  # noqa: S101 - runs as a task
        while not self._stopping:
            self._waiting.add(worker)
            try:
                group = [await self._queue.get()]
            finally:
                self._waiting.discard(worker)
            size = len(group[0].valid)
            while not self._queue.empty() and size < self._max_events:
                group.append(self._queue.get_nowait())
                size += len(group[-1].valid)
            await self._commit(group)

    async def _commit(self, group: list[_Submission]) -> None:
        combined: list[tuple[int, Candidate, Touchpoint]] = []
        owner: list[tuple[_Submission, int]] = []
        for submission in group:
            for index, candidate, touchpoint in submission.valid:
                owner.append((submission, index))
                combined.append((len(combined), candidate, touchpoint))

        def deliver(outcomes: Mapping[int, EventOutcome]) -> None:
            results: dict[int, dict[int, EventOutcome]] = {id(s): {} for s in group}
            for position, (submission, index) in enumerate(owner):
                results[id(submission)][index] = outcomes[position]
            for submission in group:
                if not submission.done.done():
                    submission.done.set_result(results[id(submission)])

        started = time.perf_counter()
        metrics.GROUP_EVENTS.observe(len(combined))
        try:
            outcomes = await self._accept(combined, deliver)
            metrics.GROUP_SECONDS.observe(time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - handed to every waiting request
            waiting = [s for s in group if not s.done.done()]
            for submission in waiting:
                submission.done.set_exception(error)
            if not waiting:
                # Answered already: the events were durable before this failed.
                logger.warning("group failed after its events were acknowledged: %r", error)
            return
        deliver(outcomes)


class Intake:
    """Accepts touchpoints: "accepted" only after the transport made them durable."""

    def __init__(
        self,
        settings: IngestSettings,
        sessions: SessionFactory,
        publisher: Publisher,
        dead_letters: DeadLetters,
        *,
        database: AsyncEngine,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._database = database  # the sessions' pool, for the raw asyncpg path
        # Raw connections between two groups of the raw asyncpg path (see _held_driver).
        self._idle_drivers: list[tuple[AsyncConnection, Driver]] = []
        self._publisher = publisher
        self.dead_letters = dead_letters
        self.limits = limits_from(settings)
        self.segment_config = segment.with_event_types(settings.segment_event_types)
        # Bounded in-flight work: when the broker is slow, callers get 503 at
        # once instead of the process queueing without limit.
        self._capacity = settings.max_in_flight
        self._in_flight = 0
        # Read when /metrics is scraped, not set twice per request.
        metrics.IN_FLIGHT.set_function(lambda: self._in_flight)
        self._group_commit = GroupCommit(
            self._accept_valid,
            workers=settings.group_commit_workers,
            max_events=settings.max_batch_events,
        )

    def start(self) -> list[asyncio.Task[None]]:
        """Start the group-commit workers (returned, so that the app can watch them)."""
        return self._group_commit.start()

    async def stop(self) -> None:
        await self._group_commit.stop()
        idle, self._idle_drivers = self._idle_drivers, []
        for connection, _ in idle:
            await connection.close()

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            headers={"Retry-After": str(self._settings.retry_after_seconds)},
        )

    async def accept(
        self, candidates: Sequence[Candidate], source: str, *, intake: str
    ) -> list[EventOutcome]:
        """Accept a batch of validated candidates; rejected ones are dead-lettered."""
        outcomes: list[EventOutcome | None] = [None] * len(candidates)
        valid: list[tuple[int, Candidate, Touchpoint]] = []
        for i, candidate in enumerate(candidates):
            if candidate.touchpoint is None:
                rejection = candidate.rejection
                assert rejection is not None  # noqa: S101
                outcomes[i] = EventOutcome(
                    "rejected",
                    kind=rejection.kind,
                    field=rejection.field,
                    reason=rejection.message,
                )
                self.dead_letters.put(candidate, source=source)
                metrics.REJECTED.labels(intake, rejection.kind).inc()
                logger.info(
                    "rejected source=%s kind=%s field=%s reason=%s",
                    source,
                    rejection.kind,
                    rejection.field,
                    rejection.message,
                )
            else:
                valid.append((i, candidate, candidate.touchpoint))

        if valid:
            if self._in_flight + len(valid) > self._capacity:
                raise self._unavailable("Too many events in flight; retry later.")
            self._in_flight += len(valid)
            try:
                accepted = await self._group_commit.submit(valid)
            finally:
                self._in_flight -= len(valid)
            for i, outcome in accepted.items():
                outcomes[i] = outcome

        final = [o for o in outcomes if o is not None]
        for status_name, count in Counter(o.status for o in final).items():
            metrics.EVENTS.labels(source, intake, status_name).inc(count)
        return final

    async def _accept_valid(
        self, valid: Sequence[tuple[int, Candidate, Touchpoint]], deliver: Delivery | None = None
    ) -> dict[int, EventOutcome]:
        on_driver = all(single_identifier(tp) and c.previous_id is None for _, c, tp in valid)
        accept = self._accept_on_driver if on_driver else self._accept_in_session
        try:
            progress = _Progress(deliver)
            try:
                return await accept(valid, progress)
            except Exception as error:
                # Without a pre-ping (see database.py), a connection that broke since its
                # last use fails the group's first statement: run the group once more on
                # a fresh connection. Not once anything was produced: that group fails as
                # before (503), and the client's retry is produced again.
                if progress.producing or not connection_lost(error):
                    raise
                metrics.CONNECTIONS_LOST.inc()
                logger.warning("database connection lost (%r); running the group again", error)
            return await accept(valid, _Progress(deliver))
        except (TransportUnavailableError, SQLAlchemyTimeoutError) as error:
            unavailable = self._unavailable(
                "The event log did not acknowledge the events; none was accepted. "
                "Retry with the same event_ids."
            )
            # Ids the client did not choose are generated here: tell it which, so
            # that its retry is recognised as the same events.
            unavailable.details = [
                ErrorDetail(
                    field=f"{i}.event_id" if len(valid) > 1 else "event_id",
                    reason=f"retry with event_id {tp.event_id}",
                )
                for i, _, tp in valid
            ]
            raise unavailable from error

    async def _accept_in_session(
        self, valid: Sequence[tuple[int, Candidate, Touchpoint]], progress: _Progress
    ) -> dict[int, EventOutcome]:
        """Any group: identity merges, aliases and accounts, through the ORM session."""
        async with unit_of_work(self._sessions) as session:
            # The accepted events are made durable by the event log's ack, not by
            # this commit: waiting for PostgreSQL's WAL flush as well would double
            # the latency. If the last few ms of claims are lost in a database
            # crash, a client's retry is produced again and the engine, which
            # stores each (source, event_id) once, ignores the repeat.
            await session.execute(text("SET LOCAL synchronous_commit = off"))
            fresh_ids = await claim_event_ids(session, [tp for _, _, tp in valid])
            fresh, outcomes = _split_fresh(valid, fresh_ids)
            if not fresh:
                return outcomes
            touchpoints = [tp for _, _, tp in fresh]
            aliases = [Alias(tp.event_id, c.previous_id) for _, c, tp in fresh if c.previous_id]
            leads = await resolve_leads(session, touchpoints, aliases)
            accounts = await attach_accounts(session, touchpoints, leads)
            resolved = [
                _resolved(tp, leads[tp.event_id], accounts.get(tp.event_id, tp.account))
                for tp in touchpoints
            ]
            await self._produce(fresh, resolved, outcomes, progress)
            return outcomes

    async def _accept_on_driver(
        self, valid: Sequence[tuple[int, Candidate, Touchpoint]], progress: _Progress
    ) -> dict[int, EventOutcome]:
        """The common group: each event has one identifier (a lead id or an anonymous id),
        no email, account or alias, so no merge and no account can follow from it. One
        call on the pool's asyncpg connection claims, locks and resolves the group (the
        ORM session's per-statement work was most of a small group's CPU, and each
        statement was a round trip). Same claims, same locks (in the same order) and the
        same resolution as the session path, so both serialise with each other and with
        other processes."""
        connection, driver = await self._held_driver()
        try:
            async with driver.transaction():
                fresh_ids, leads = await claim_and_resolve_single(
                    driver, [tp for _, _, tp in valid]
                )
                fresh, outcomes = _split_fresh(valid, fresh_ids)
                if not fresh:
                    return outcomes
                resolved = [_resolved(tp, leads[tp.event_id], tp.account) for _, _, tp in fresh]
                await self._produce(fresh, resolved, outcomes, progress)
                if progress.deliver is not None:
                    # Answer now: the events are durable in the event log. The
                    # commit only keeps this group's claims and new identities, and
                    # a PostgreSQL crash could lose those after the commit as well
                    # (synchronous_commit is off), with the same consequences; see
                    # "Durability" in docs/architecture.md. Waiting for the commit
                    # made groups smaller and every request slower.
                    progress.deliver(outcomes)
                return outcomes
        except Exception as error:
            if not driver.is_closed():
                raise
            # Errors on the raw connection bypass SQLAlchemy, which would otherwise
            # put the dead connection back in the pool: discard it here.
            await connection.invalidate()
            raise ConnectionLostError(repr(error)) from error
        finally:
            await self._release_driver(connection, driver)

    async def _held_driver(self) -> tuple[AsyncConnection, Driver]:
        """A raw connection for one group: one a previous group left, else one from the
        pool. Workers keep their connections between groups: a checkout and checkin
        through SQLAlchemy cost 110-150 us of CPU per group, about as much as its own
        BEGIN, call and COMMIT (bench/ingest_connection.py). One the server closed
        meanwhile is dropped here, as the pool's checkout check
        (``refuse_closed_connections``) would drop it."""
        while self._idle_drivers:
            connection, driver = self._idle_drivers.pop()
            if not driver.is_closed():
                return connection, driver
            await connection.invalidate()
            await connection.close()
        connection = await self._database.connect()
        try:
            raw = await connection.get_raw_connection()
            fresh: Driver | None = raw.driver_connection
            assert fresh is not None  # noqa: S101 - a checked-out connection is open
        except BaseException:
            await connection.close()
            raise
        return connection, fresh

    async def _release_driver(self, connection: AsyncConnection, driver: Driver) -> None:
        """Keep a connection left clean for the next group; give any other back."""
        if connection.invalidated or driver.is_closed() or driver.is_in_transaction():
            # Broken, or interrupted mid-transaction (a cancelled stop): the pool
            # discards the one and rolls the other back.
            await connection.close()
        else:
            self._idle_drivers.append((connection, driver))

    async def _produce(
        self,
        fresh: Sequence[tuple[int, Candidate, Touchpoint]],
        resolved: Sequence[Touchpoint],
        outcomes: dict[int, EventOutcome],
        progress: _Progress,
    ) -> None:
        """Hand the group to the event log and wait for its durable acknowledgement."""
        progress.producing = True
        started = time.perf_counter()
        await self._publisher.publish(
            self._settings.touchpoints_topic,
            [OutgoingRecord(key=tp.lead_key.encode(), value=tp.to_record()) for tp in resolved],
        )
        metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
        for (i, _, _), tp in zip(fresh, resolved, strict=True):
            outcomes[i] = EventOutcome("accepted", event_id=tp.event_id, lead_id=tp.lead_key)


@dataclass
class _Progress:
    """How far one attempt at a group got, and how to answer its requests early."""

    deliver: Delivery | None = None
    producing: bool = False


def _split_fresh(
    valid: Sequence[tuple[int, Candidate, Touchpoint]], fresh_ids: set[tuple[str, str]]
) -> tuple[list[tuple[int, Candidate, Touchpoint]], dict[int, EventOutcome]]:
    """The events this group claimed (the first of repeats inside it), and duplicates."""
    seen: set[tuple[str, str]] = set()
    fresh: list[tuple[int, Candidate, Touchpoint]] = []
    outcomes: dict[int, EventOutcome] = {}
    for i, candidate, touchpoint in valid:
        key = (touchpoint.source, touchpoint.event_id)
        if key in fresh_ids and key not in seen:
            seen.add(key)
            fresh.append((i, candidate, touchpoint))
        else:
            outcomes[i] = EventOutcome("duplicate", event_id=touchpoint.event_id)
    return fresh, outcomes


def _resolved(touchpoint: Touchpoint, lead: str, account: AccountIn | None) -> Touchpoint:
    """The touchpoint as forwarded: stamped with its canonical lead and account."""
    if lead == touchpoint.lead_key and account is touchpoint.account:
        # Resolution changed nothing (the common case): the record already says it all,
        # since the canonical lead is the event's own lead id (or provisional key).
        return touchpoint
    # Both values were validated already: copy without validating again.
    return touchpoint.model_copy(update={"resolved_lead_id": lead, "account": account})


async def claim_event_ids(
    session: AsyncSession, touchpoints: Sequence[Touchpoint]
) -> set[tuple[str, str]]:
    """Claim each event_id; return those not seen before inside the window.

    The rows stay locked until the transaction ends, so a concurrent request
    with the same event_id waits for this one and then sees a duplicate (or,
    if this one rolled back, claims it itself).
    """
    # Sorted: concurrent groups then wait on each other's rows in one order, not in a cycle.
    # Two array parameters instead of one bound row per event: asyncpg encodes the
    # arrays in C, where an executemany spends ~20 us per row in Python.
    keys = sorted({(tp.source, tp.event_id) for tp in touchpoints})
    claimed = await session.execute(
        _CLAIM,
        {
            "sources": [source for source, _ in keys],
            "event_ids": [event_id for _, event_id in keys],
        },
    )
    return {(source, event_id) for source, event_id in claimed}


_CLAIM = text(
    "INSERT INTO ingest_dedup (source, event_id) "
    "SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:event_ids AS text[])) "
    "ON CONFLICT (source, event_id) DO NOTHING "
    "RETURNING source, event_id"
)


async def claim_and_resolve_single(
    driver: Driver, touchpoints: Sequence[Touchpoint]
) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """For events that satisfy ``single_identifier``, on a raw asyncpg connection inside
    its transaction, in one round trip (migration 0018's function, amended by 0019):
    claim the event ids (as ``claim_event_ids``), lock every event's identifier, and
    resolve each claimed event's lead (as ``resolve_leads``, which with one identifier
    and no alias never merges). Returns the claimed (source, event_id) and the claimed
    events' leads.

    The function claims before it locks, and locks in the order every path locks: a
    group waiting for a claimed id and one waiting for a lock never wait in a cycle.
    """
    claims = sorted({(tp.source, tp.event_id) for tp in touchpoints})
    events: list[tuple[Touchpoint, IdentityKey]] = []
    for touchpoint in touchpoints:
        [key] = identifiers(touchpoint)
        events.append((touchpoint, key))
    # One JSON document each way: asyncpg encodes array parameters and decodes rows
    # element by element in Python: the call cost 6-8 us of CPU per event, now about 3
    # (docs/benchmarks.md).
    request = orjson.dumps(
        {
            "claims": claims,
            "locks": lock_names(key for _, key in events),
            "events": [
                (tp.source, tp.event_id, kind, value, tp.provisional_lead_key)
                for tp, (kind, value) in events
            ],
        }
    ).decode()
    # As text both ways: a connection from the SQLAlchemy pool has its own jsonb codecs.
    result = orjson.loads(
        await driver.fetchval(
            "SELECT ingest_claim_single_identifiers($1::text::jsonb)::text", request
        )
    )
    claimed = {(source, event_id) for source, event_id in result["claimed"]}
    owners = {(kind, value): lead for kind, value, lead in result["owners"]}
    leads: dict[str, str] = {}
    for tp, key in events:
        if (tp.source, tp.event_id) in claimed:
            lead = owners[key]
            # As in resolve_leads: a lead that was merged into another follows it.
            leads[tp.event_id] = owners.get(("lead_id", lead), lead)
    return claimed, leads


async def prune_dedup(session: AsyncSession, *, older_than: timedelta) -> int:
    result = await session.execute(
        delete(IngestDedup).where(IngestDedup.accepted_at < datetime.now(UTC) - older_than)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
