"""The stage engine end to end: Kafka to committed PostgreSQL state, and ingest to state.

Three measurements in one run, on the local Kafka and PostgreSQL (`make services-up`):

1. **Consume ceiling**: a bare aiokafka consumer reads the generated topic to its end
   (``getmany`` with the engine's batch size, no processing).
2. **Engine throughput**: a real `leadstage engine` process (default funnels
   b2b-six-stage and aida) consumes the same topic from the start until every event's
   offset is committed in PostgreSQL (``consumer_offsets``). Events/s, the ratio to the
   ceiling, the engine's CPU time and its peak RSS (``VmHWM`` in ``/proc``).
3. **End-to-end latency** at a steady rate: a real `leadstage ingest` process takes
   batches of events over HTTP while the same engine runs; for one event in ten, the
   time from ingest's 202 to the event's row in ``touchpoints``, which the engine
   writes in the same transaction as the lead's state, history and offsets.

The data: ``--events`` touchpoints over ``--leads`` leads and ``--accounts`` accounts
(deterministic seed). Each lead belongs to one account (buying groups of skewed
sizes, firmographics that feed the fit score) and walks a non-linear journey through
the touchpoint types of schema v1: noise (page views, email opens, ad clicks) between
steps, occasional returns to earlier-stage touches, exits (lost, disqualified), and
customer touches (renewal, upsell, churn). Event times span January to October 2026;
records are produced in arrival order, which is event time plus a small lag, except
``--late`` of them that arrive one to three days late (offline CRM syncs).

    .venv/bin/python bench/engine.py                     # 1M events, 100k leads, 10k accounts
    .venv/bin/python bench/engine.py --events 50000 --leads 5000 --accounts 500 --seconds 10

Uses a throwaway database (migrated by alembic through `leadstage migrate`) and a
throwaway topic prefix, both removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadstage.local import services
from leadstage.local.usage import cpu_seconds
from leadstage.transport.base import OutgoingRecord
from leadstage.transport.kafka import KafkaPublisher, delete_topics_with_prefix

SOURCE = "bench"
START = datetime(2026, 1, 1, tzinfo=UTC)
LAST_START = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)

# Journey phases, in funnel order; each lists the touches typical of it.
PHASES: list[list[str]] = [
    ["page_view", "ad_click", "email_opened"],
    ["content_download", "newsletter_signup", "webinar_registered", "email_clicked", "pricing"],
    ["demo_requested", "callback_requested", "contact_form_submitted"],
    ["webinar_attended", "call", "trial_started"],
    ["meeting_scheduled", "meeting_held", "proposal_sent"],
    ["deal_won", "purchase", "deal_lost"],
    ["renewal", "upsell", "referral", "page_view", "churned"],
]
NOISE = ["page_view", "page_view", "email_opened", "ad_click", "pricing"]
PAGES = ["/", "/product", "/blog/b2b-funnels", "/customers", "/integrations", "/docs"]
CHANNELS = ["paid_social", "paid_search", "organic_search", "email", "social", "direct"]
INDUSTRIES = ["software", "saas", "fintech", "manufacturing", "retail", "healthcare",
              "it_services", "education", "logistics", "cybersecurity"]  # fmt: skip
COUNTRIES = ["DE", "US", "GB", "FR", "NL", "AT", "CH", "ES", "IT", "PL", "SE", "JP"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass
class Dataset:
    accounts: list[dict[str, Any]]
    lead_account: list[int]  # lead index -> account index
    # (arrival, occurred_at, lead, touch) in arrival order
    events: list[tuple[float, float, int, str]]


def generate(events: int, leads: int, accounts: int, late: float, seed: int = 7) -> Dataset:
    rng = random.Random(seed)
    firms = []
    for n in range(accounts):
        domain = f"account-{n}.example.{'edu' if rng.random() < 0.02 else 'com'}"
        firms.append(
            {
                "id": f"acct-{n}",
                "domain": domain,
                "name": f"Account {n}",
                "industry": rng.choice(INDUSTRIES),
                "employee_count": int(rng.lognormvariate(5, 1.6)),
                "country": rng.choice(COUNTRIES),
                "tier": rng.choice([1, 2, 2, 3, 3, 3, 4, 5]),
            }
        )
    # Buying groups of skewed sizes: a few accounts with many contacts.
    weights = [rng.lognormvariate(0, 1) for _ in range(accounts)]
    lead_account = rng.choices(range(accounts), weights=weights, k=leads)

    # Touches per lead: at least one, skewed (most leads touch a few times), summing
    # to exactly ``events``.
    raw = [rng.expovariate(1.0) for _ in range(leads)]
    scale = (events - leads) / sum(raw)
    counts = [1 + int(r * scale) for r in raw]
    for n in rng.sample(range(leads), events - sum(counts)):
        counts[n] += 1

    span = (LAST_START - START).total_seconds()
    end = END.timestamp()
    out: list[tuple[float, float, int, str]] = []
    for lead, count in enumerate(counts):
        at = START.timestamp() + rng.random() * span
        gap = rng.choice([0.5, 1, 2, 4]) * 86_400  # a lead's pace, mean days between touches
        phase = 0
        advance = rng.choice([0.15, 0.25, 0.35])  # how eager the buyer is
        for _ in range(count):
            at = min(at + rng.expovariate(1 / gap), end - 1)
            roll = rng.random()
            if roll < 0.45:
                touch = rng.choice(NOISE)
            elif roll < 0.55 and phase:
                touch = rng.choice(PHASES[rng.randrange(phase)])  # back to earlier touches
            else:
                if rng.random() < advance and phase < len(PHASES) - 1:
                    phase += 1
                touch = rng.choice(PHASES[phase])
                if touch in ("deal_lost", "churned") and rng.random() < 0.5:
                    phase = 0  # re-entry later, as a new opportunity
            lag = rng.expovariate(1 / 5.0)  # seconds from the touch to its arrival
            if rng.random() < late:
                lag += rng.uniform(1, 3) * 86_400
            out.append((at + lag, at, lead, touch))
    out.sort()
    return Dataset(firms, lead_account, out)


def touchpoint_json(
    event_id: str,
    touch: str,
    occurred_at: datetime,
    received_at: datetime,
    lead: int,
    account: dict[str, Any],
    rng: random.Random,
    *,
    with_source: bool = True,
) -> dict[str, Any]:
    """A touchpoint as ingest forwards it (``with_source``), or as a client posts it."""
    properties: dict[str, Any] = {}
    kind = touch
    if touch == "pricing":
        kind, properties["page_url"] = "page_view", "https://example.com/pricing"
    elif touch == "page_view":
        properties["page_url"] = "https://example.com" + rng.choice(PAGES)
    elif touch == "call":
        properties["outcome"] = rng.choice(["connected", "connected", "voicemail", "not_a_fit"])
    elif touch in ("deal_won", "purchase", "upsell", "renewal"):
        properties["amount"] = rng.randrange(5_000, 200_000)
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "type": kind,
        "occurred_at": iso(occurred_at),
        "lead_id": f"lead-{lead}",
        "account": account,
        "channel": rng.choice(CHANNELS),
        "properties": properties,
    }
    if rng.random() < 0.3:
        event["utm"] = {"source": "google", "medium": "cpc", "name": "q3-pipeline"}
    if with_source:
        event["source"] = SOURCE
        event["received_at"] = iso(received_at)
    return event


def records(data: Dataset, rng: random.Random) -> Iterator[OutgoingRecord]:
    for n, (arrival, occurred, lead, touch) in enumerate(data.events):
        event = touchpoint_json(
            f"ev-{n}",
            touch,
            datetime.fromtimestamp(occurred, UTC),
            datetime.fromtimestamp(arrival, UTC),
            lead,
            data.accounts[data.lead_account[lead]],
            rng,
        )
        yield OutgoingRecord(
            key=f"lead-{lead}".encode(), value=json.dumps(event, separators=(",", ":")).encode()
        )


async def produce(bootstrap: str, topic: str, data: Dataset) -> float:
    publisher = KafkaPublisher(bootstrap, timeout_seconds=60)
    await publisher.start()
    started = time.perf_counter()
    chunk: list[OutgoingRecord] = []
    try:
        for record in records(data, random.Random(11)):
            chunk.append(record)
            if len(chunk) == 5_000:
                await publisher.publish(topic, chunk)
                chunk = []
        if chunk:
            await publisher.publish(topic, chunk)
    finally:
        await publisher.stop()
    return time.perf_counter() - started


async def consume_ceiling(
    bootstrap: str, topic: str, partition_count: int, batch: int
) -> tuple[int, float]:
    """A bare consumer reading the topic to its end, as the engine reads (read_committed,
    ``getmany`` of at most the engine's batch size): no parsing, no processing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partition_count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = sum(ends.values())
        read = 0
        started = time.perf_counter()
        while read < remaining:
            batches = await consumer.getmany(timeout_ms=200, max_records=batch)
            read += sum(len(messages) for messages in batches.values())
        return read, time.perf_counter() - started
    finally:
        await consumer.stop()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@dataclass
class Sampler:
    """Samples a process's RSS while a measurement runs."""

    pid: int
    rss_kb: list[int] = field(default_factory=list)

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.rss_kb.append(proc_status(self.pid)["VmRSS"])

    @property
    def peak_mb(self) -> float:
        return proc_status(self.pid)["VmHWM"] / 1024


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready:\n{log.read_text()[-3000:]}")


async def committed(db: asyncpg.Connection, group: str) -> int:
    value = await db.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE consumer_group = $1",
        group,
    )
    return int(value)


@dataclass
class EngineRun:
    events: int
    seconds: float
    cpu_seconds: float
    startup_seconds: float
    rss: Sampler


async def engine_throughput(
    dsn: str, group: str, total: int, engine: subprocess.Popen[bytes], started_at: float
) -> EngineRun:
    """From the first committed batch to the last: (events after the first) / time."""
    db = await asyncpg.connect(dsn)
    rss = Sampler(engine.pid)
    try:
        first_count = first_at = None
        cpu_at_first = 0.0
        last_report = time.monotonic()
        while True:
            if engine.poll() is not None:
                raise RuntimeError("the engine exited during the run")
            count = await committed(db, group)
            now = time.monotonic()
            rss.sample()
            if count and first_at is None:
                first_count, first_at, cpu_at_first = count, now, cpu_seconds(engine.pid)
            if count >= total:
                break
            if now - last_report > 30:
                last_report = now
                print(f"  ... {count:,} of {total:,} committed", flush=True)
            await asyncio.sleep(0.1)
        if first_at is None or first_count is None:
            raise RuntimeError("nothing was committed")
        cpu = cpu_seconds(engine.pid) - cpu_at_first
        return EngineRun(total - first_count, now - first_at, cpu, first_at - started_at, rss)
    finally:
        await db.close()


@dataclass
class Latency:
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # of the failed requests
    samples: list[float] = field(default_factory=list)  # seconds, 202 -> visible
    response_ms: list[float] = field(default_factory=list)  # request -> 202
    elapsed: float = 0.0
    unseen: int = 0
    state_checked: int = 0


async def end_to_end(
    ingest_url: str,
    write_key: str,
    dsn: str,
    data: Dataset,
    *,
    rate: int,
    seconds: float,
    per_request: int,
    warmup: float,
    engine_rss: Sampler,
) -> Latency:
    """Post ``rate`` events/s in batches of ``per_request`` on a fixed schedule (open
    loop); one event in ten is sampled. A poller looks for the sampled events' rows in
    ``touchpoints`` every 20 ms: the engine stores the row in the same transaction as
    the lead's new state, transitions, scores, outbox rows and offsets, so the row
    being visible means all of that is."""
    rng = random.Random(23)
    result = Latency()
    pending: dict[str, tuple[float, datetime]] = {}  # event_id -> (202 time, occurred_at)
    seen_leads: dict[str, tuple[str, datetime]] = {}
    run = secrets.token_hex(3)
    interval = per_request / rate
    db = await asyncpg.connect(dsn)
    stop_polling = asyncio.Event()

    async def poll() -> None:
        while not stop_polling.is_set() or pending:
            await asyncio.sleep(0.02)
            engine_rss.sample()
            if not pending:
                continue
            since = min(at for _, at in pending.values())
            rows = await db.fetch(
                "SELECT event_id FROM touchpoints WHERE source = $1 AND occurred_at >= $2 "
                "AND event_id = ANY($3::text[])",
                SOURCE,
                since,
                list(pending),
            )
            now = time.monotonic()
            for row in rows:
                answered, _ = pending.pop(row["event_id"])
                result.samples.append(now - answered)
            if stop_polling.is_set() and pending and now - stop_at > 180:
                result.unseen = len(pending)
                return

    async def post(client: httpx.AsyncClient, n: int, measured: bool) -> None:
        batch, sampled = [], []
        for i in range(per_request):
            lead = rng.randrange(len(data.lead_account))
            event_id = f"e2e-{run}-{n}-{i}"
            occurred = datetime.now(UTC)
            touch = rng.choice(NOISE + PHASES[rng.randrange(len(PHASES))])
            account = data.accounts[data.lead_account[lead]]
            batch.append(
                touchpoint_json(
                    event_id, touch, occurred, occurred, lead, account, rng, with_source=False
                )
            )
            if measured and (n * per_request + i) % 10 == 0:
                sampled.append((event_id, occurred, f"lead-{lead}"))
        result.sent += len(batch)
        sent_at = time.monotonic()
        try:
            response = await client.post(
                f"{ingest_url}/v1/events/batch",
                content=json.dumps({"events": batch}),
                headers={"X-Write-Key": write_key, "Content-Type": "application/json"},
            )
        except httpx.HTTPError as error:
            result.failed += len(batch)
            result.statuses[type(error).__name__] = result.statuses.get(type(error).__name__, 0) + 1
            return
        answered = time.monotonic()
        if response.status_code != 202:
            result.failed += len(batch)
            status = str(response.status_code)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            return
        result.accepted += len(batch)
        result.response_ms.append((answered - sent_at) * 1000)
        for event_id, occurred, lead_key in sampled:
            pending[event_id] = (answered, occurred)
            seen_leads[event_id] = (lead_key, occurred)

    poller = asyncio.create_task(poll())
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < seconds:
            task = asyncio.create_task(post(client, n, measured=elapsed >= warmup))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, started + n * interval - time.monotonic()))
        result.elapsed = time.monotonic() - started
        await asyncio.gather(*tasks)
    stop_at = time.monotonic()
    stop_polling.set()
    await poller
    # The state itself: every sampled lead's stage rows were updated by that event or a
    # later one (last_touch_at), in both funnels.
    checked = await db.fetchval(
        "SELECT count(*) FROM unnest($1::text[], $2::timestamptz[]) AS s(lead_key, at) "
        "WHERE (SELECT count(*) FROM lead_stages l WHERE l.lead_key = s.lead_key "
        "AND l.last_touch_at >= s.at) = 2",
        [lead for lead, _ in seen_leads.values()],
        [at for _, at in seen_leads.values()],
    )
    result.state_checked = int(checked)
    await db.close()
    return result


async def caught_up(
    dsn: str, group: str, bootstrap: str, topic: str, partitions: int, limit: float = 600
) -> None:
    """Wait until the engine has committed every record now in the topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    db = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + limit
        while await committed(db, group) < sum(ends.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the engine did not catch up")
            await asyncio.sleep(0.5)
    finally:
        await db.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seed_accounts(dsn: str, data: Dataset) -> None:
    """The accounts and contact links ingest would have written for these events."""

    async def write() -> None:
        db = await asyncpg.connect(dsn)
        try:
            columns = ("id", "domain", "name", "industry", "employee_count", "country", "tier")
            await db.copy_records_to_table(
                "accounts",
                records=[tuple(a[c] for c in columns) for a in data.accounts],
                columns=columns,
            )
            await db.copy_records_to_table(
                "lead_accounts",
                records=[
                    (f"lead-{lead}", data.accounts[account]["id"], "explicit")
                    for lead, account in enumerate(data.lead_account)
                ],
                columns=("lead_id", "account_id", "attached_by"),
            )
        finally:
            await db.close()

    asyncio.run(write())


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--batch", type=int, default=500, help="the engine's LEADSTAGE_BATCH_MAX_RECORDS"
    )
    parser.add_argument("--late", type=float, default=0.005, help="share of late arrivals")
    parser.add_argument(
        "--rate",
        type=int,
        action="append",
        help="end-to-end events/s (repeat for several rates; default 2000)",
    )
    parser.add_argument("--seconds", type=float, default=30, help="end-to-end duration")
    parser.add_argument("--per-request", type=int, default=20, help="events per ingest POST")
    parser.add_argument("--keep", action="store_true", help="keep the database and topics")
    parser.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run the engine under cProfile, writing its stats to FILE when it exits",
    )
    args = parser.parse_args()

    postgres, kafka = services.local_postgres(), services.local_kafka()
    run_id = secrets.token_hex(4)
    database = f"bench_engine_{run_id}"
    prefix = f"bench-engine-{run_id}."
    group = f"bench-engine-{run_id}"
    postgres.create_database(database)
    url = postgres.url(database)
    dsn = url.replace("+asyncpg", "")
    env = {
        **os.environ,
        "LEADSTAGE_DATABASE_URL": url,
        "LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "LEADSTAGE_TOPIC_PREFIX": prefix,
        "LEADSTAGE_TOPIC_PARTITIONS": str(args.partitions),
        "LEADSTAGE_TRANSPORT": "kafka",
        "LEADSTAGE_CONSUMER_GROUP": group,
        "LEADSTAGE_LOG_FORMAT": "text",
        "LEADSTAGE_BATCH_MAX_RECORDS": str(args.batch),
    }
    topic = f"{prefix}touchpoints.v1"
    cli = [sys.executable, "-m", "leadstage"]
    processes: list[subprocess.Popen[bytes]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "topics"], env=env, check=True, capture_output=True)

        began = time.perf_counter()
        data = generate(args.events, args.leads, args.accounts, args.late)
        print(f"generated {len(data.events):,} events in {time.perf_counter() - began:.1f}s")
        seed_accounts(dsn, data)
        produce_s = asyncio.run(produce(kafka.bootstrap_servers, topic, data))
        print(f"produced to {topic} ({args.partitions} partitions) in {produce_s:.1f}s")

        read, ceiling_s = asyncio.run(
            consume_ceiling(kafka.bootstrap_servers, topic, args.partitions, args.batch)
        )
        if read != args.events:
            raise RuntimeError(f"the ceiling consumer read {read} records, not {args.events}")
        ceiling = read / ceiling_s
        print(f"consume ceiling: {read:,} records in {ceiling_s:.2f}s = {ceiling:,.0f}/s")

        engine_port = free_port()
        engine_log = scratch / "engine.log"
        started_at = time.monotonic()
        with engine_log.open("wb") as output:
            profile = ["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []
            engine = subprocess.Popen(
                [sys.executable, *profile, "-m", "leadstage", "engine"],
                env={**env, "LEADSTAGE_HTTP_PORT": str(engine_port)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        processes.append(engine)
        run = asyncio.run(engine_throughput(dsn, group, args.events, engine, started_at))
        engine_rate = run.events / run.seconds
        print(
            f"engine: {run.events:,} events in {run.seconds:.1f}s = {engine_rate:,.0f}/s "
            f"(ratio to ceiling {engine_rate / ceiling:.3f}); CPU {run.cpu_seconds:.1f}s "
            f"= {run.cpu_seconds / run.events * 1e6:.0f} us/event; started in "
            f"{run.startup_seconds:.1f}s; RSS max sampled {max(run.rss.rss_kb) / 1024:.0f} MB"
        )

        # End to end: ingest beside the same engine, now caught up.
        ingest_port = free_port()
        ingest_env = {
            **env,
            "LEADSTAGE_HTTP_PORT": str(ingest_port),
            "LEADSTAGE_RAW_INTAKE_ENABLED": "false",
            "LEADSTAGE_RATE_LIMIT_PER_SECOND": "10000000",
            "LEADSTAGE_LOG_LEVEL": "WARNING",
        }
        write_key = (
            subprocess.run(
                [*cli, "keys", "create", "--source", SOURCE],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        ingest_log = scratch / "ingest.log"
        with ingest_log.open("wb") as output:
            ingest = subprocess.Popen(
                [*cli, "ingest"], env=ingest_env, stdout=output, stderr=subprocess.STDOUT
            )
        processes.append(ingest)
        wait_ready(f"http://127.0.0.1:{ingest_port}/readyz", ingest, ingest_log)
        wait_ready(f"http://127.0.0.1:{engine_port}/readyz", engine, engine_log)
        latencies: dict[int, Latency] = {}
        for rate in args.rate or [2_000]:
            latencies[rate] = asyncio.run(
                end_to_end(
                    f"http://127.0.0.1:{ingest_port}",
                    write_key,
                    dsn,
                    data,
                    rate=rate,
                    seconds=args.seconds,
                    per_request=args.per_request,
                    warmup=min(5.0, args.seconds / 5),
                    engine_rss=run.rss,
                )
            )
            # The next rate starts with no backlog.
            asyncio.run(caught_up(dsn, group, kafka.bootstrap_servers, topic, args.partitions))
        peak_rss = run.rss.peak_mb
    finally:
        for process in reversed(processes):
            # uvicorn re-raises the signal after its shutdown: SIGINT ends cProfile's run
            # with KeyboardInterrupt (stats written), SIGTERM would kill it first.
            stop(process, signal.SIGINT if args.cprofile else signal.SIGTERM)
        if not args.keep:
            postgres.drop_database(database)
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics_with_prefix(kafka.bootstrap_servers, prefix))
    print()
    print(
        f"events={args.events:,} leads={args.leads:,} accounts={args.accounts:,} "
        f"partitions={args.partitions} late={args.late} batch={args.batch}"
    )
    print(f"consume ceiling (bare aiokafka getmany): {ceiling:12,.0f} events/s")
    print(f"engine, Kafka -> committed PostgreSQL:   {engine_rate:12,.0f} events/s")
    print(f"ratio engine/ceiling: {engine_rate / ceiling:.3f}")
    print(f"engine peak RSS (VmHWM): {peak_rss:.0f} MB")
    for rate, latency in latencies.items():
        posted = latency.accepted / latency.elapsed
        print(
            f"end to end at {rate:,}/s ({args.per_request}/request) for {args.seconds:.0f}s: "
            f"accepted {posted:,.0f}/s ({latency.accepted:,} events), failed "
            f"{latency.failed:,} {latency.statuses or ''}; "
            f"ingest 202 p50 {percentile(latency.response_ms, 0.5):.0f} ms"
        )
        ms = [s * 1000 for s in latency.samples]
        print(
            f"  ingest 202 -> state visible, {len(ms):,} sampled events: "
            f"p50 {percentile(ms, 0.5):.0f} ms, p95 {percentile(ms, 0.95):.0f} ms, "
            f"p99 {percentile(ms, 0.99):.0f} ms, max {max(ms, default=float('nan')):.0f} ms, "
            f"mean {statistics.fmean(ms) if ms else float('nan'):.0f} ms; "
            f"never seen {latency.unseen}; lead state checked {latency.state_checked:,} "
            f"of {len(ms) + latency.unseen:,}"
        )
    print(f"logs: {scratch}")


if __name__ == "__main__":
    main()
