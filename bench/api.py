"""Metrics API latency over a large stored history, with two baselines measured in the
same run over the same data:

* (a) PostgreSQL, straightforward SQL over the raw touchpoints: a lead's touchpoints in
  time order (the ``(lead_key, occurred_at)`` index), and per lead the furthest stage
  from its event types, counted by industry and stage;
* (b) DuckDB over the same rows exported to Parquet, the same two queries.

Measured: ``GET /v1/leads/{id}`` for random existing leads at a steady rate (open loop:
requests are scheduled at fixed intervals whatever earlier answers do, latency counts
from the scheduled time; first at a lighter rate, then at the target rate), and
``GET /v1/funnels/b2b-six-stage/summary?breakdown=industry`` over the whole period,
sequentially after a warm-up; the API process's CPU time per request and its memory.
The data is generated set-based in SQL as the stage engine would store it for the
b2b-six-stage funnel: touchpoints, transitions up to each lead's furthest stage, one
lead_stages row per lead, identities, accounts and account links.

    .venv/bin/python bench/api.py [--leads 1000000] [--touchpoints 1000000]
        [--rate 500] [--light-rate 50] [--seconds 10] [--summary-runs 20]
        [--duckdb-lookups 200]

Needs the local PostgreSQL (`make services-up`); uses a throwaway database and a real
`leadstage api` process on it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import duckdb
import httpx
import uvloop

from leadstage.funnels import EventView, LeadState, load_presets
from leadstage.local import services
from leadstage.local.usage import cpu_seconds, process_tree

FUNNEL = load_presets()["b2b-six-stage"]
SCOPES = ("leads:read", "metrics:read")
PERIOD_FROM = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD_TO = datetime(2026, 11, 1, tzinfo=UTC)
# Leads start within the first 270 days, so their touches stay inside the period.
START_SPREAD_DAYS = 270
# Furthest stage reached, Awareness .. Customer: each stage keeps about half the last.
FURTHEST_SHARES = (0.45, 0.25, 0.14, 0.08, 0.05, 0.03)
INDUSTRIES = (
    "software",
    "manufacturing",
    "fintech",
    "retail",
    "healthcare",
    "it_services",
    "logistics",
    "education",
    "saas",
    "energy",
    "cybersecurity",
    "media",
)
COUNTRIES = ("DE", "US", "GB", "FR", "NL", "AT", "CH", "ES", "IT", "PL", "SE", "CA")
CHANNELS = ("paid_search", "organic_search", "email", "direct", "paid_social", "referral")
# Touches that move nobody: a page that is not the pricing page, an opened email.
FILLERS = ("page_view", "email_opened", "page_view")
FILLER_PAGE = "https://example.com/blog/buying-guide"


def moves_by_type() -> dict[str, tuple[int, str]]:
    """Touchpoint type -> (stage position, rule) on a lead's first event, asked of the
    preset itself: the generator and both baselines follow the funnel's rules."""
    found: dict[str, tuple[int, str]] = {}
    for kind in (
        "page_view",
        "ad_click",
        "content_download",
        "newsletter_signup",
        "webinar_registered",
        "email_clicked",
        "email_opened",
        "demo_requested",
        "callback_requested",
        "contact_form_submitted",
        "webinar_attended",
        "call",
        "trial_started",
        "meeting_scheduled",
        "meeting_held",
        "proposal_sent",
        "deal_won",
        "purchase",
    ):
        event = EventView(
            source="bench",
            event_id="probe",
            type=kind,
            occurred_at=PERIOD_FROM,
            properties={"page_url": FILLER_PAGE},
        )
        result = FUNNEL.step(LeadState(), event, [])
        for change in result.changes:
            if change.kind == "stage" and change.to_stage in FUNNEL.stages:
                found[kind] = (FUNNEL.stages.index(change.to_stage), change.rule)
    return found


def exit_rule(kind: str) -> tuple[str, str]:
    """(exit, rule) of an exit event for a lead already in the funnel."""
    state = LeadState(stage=FUNNEL.stages[0], stage_entered_at=PERIOD_FROM)
    event = EventView(source="bench", event_id="probe", type=kind, occurred_at=PERIOD_TO)
    for change in FUNNEL.step(state, event, []).changes:
        if change.kind == "stage" and change.to_stage in FUNNEL.exits:
            return change.to_stage, change.rule
    raise RuntimeError(f"{kind} is not an exit event in {FUNNEL.name}")


MOVES = moves_by_type()
LOST = ("deal_lost", *exit_rule("deal_lost"))
DISQUALIFIED = ("custom:disqualified", *exit_rule("custom:disqualified"))
# The fillers move nobody; the first touch of a lead always does.
assert "email_opened" not in MOVES  # noqa: S101
assert "page_view" in MOVES  # noqa: S101


def sql_text(values: Sequence[str]) -> str:
    """A SQL array of constants (never input)."""
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def pick(values: Sequence[str], seed: str) -> str:
    """SQL: one of ``values``, chosen by an integer expression (deterministic)."""
    return f"({sql_text(values)})[1 + ({seed}) % {len(values)}]"


def type_of(position: str, seed: str) -> str:
    """SQL: the touchpoint type of a move to stage ``position`` (deterministic in seed,
    so touchpoints and transitions agree)."""
    cases = []
    for stage in range(len(FUNNEL.stages)):
        kinds = [kind for kind, (at, _) in MOVES.items() if at == stage]
        cases.append(f"WHEN {stage} THEN {pick(kinds, seed)}")
    return f"CASE {position} {' '.join(cases)} END"


def rule_of(position: str) -> str:
    rules = {at: rule for at, rule in MOVES.values()}
    cases = " ".join(f"WHEN {at} THEN '{rule}'" for at, rule in sorted(rules.items()))
    return f"CASE {position} {cases} END"


def stage_name(position: str) -> str:
    return f"({sql_text(FUNNEL.stages)})[{position} + 1]"


def iso(moment: str) -> str:
    """SQL: a timestamptz as the engine's JSON writes it (isoformat, UTC)."""
    return f"to_char(({moment}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def position_of_type(column: str) -> str:
    """SQL: the stage position an event type moves a lead to (NULL: none), the baselines'
    CASE mapping of the preset's rules."""
    cases = " ".join(f"WHEN '{kind}' THEN {at}" for kind, (at, _) in MOVES.items())
    return f"CASE {column} {cases} END"


EVENT_ID = "md5(p.i || ':' || {j})::uuid::text"

# -- Generation ------------------------------------------------------------------------

# One row per lead: its furthest stage, number of touches (exactly --touchpoints in all,
# at least one each, the rest spread by exponential weights), exit, timing and account.
# Of n touches, the moving ones are the last min(n, furthest + 1) stages, spread evenly
# over the touches, the first touch always moving (it is where the lead entered).
PLAN = f"""
CREATE UNLOGGED TABLE bench_plan AS
SELECT i, 'lead-' || i AS lead_key, furthest, touches,
       LEAST(touches, furthest + 1) AS moving,
       CASE WHEN touches > furthest + 1 AND furthest = 4 AND exit_draw < 0.3 THEN 'lost'
            WHEN touches > furthest + 1 AND furthest IN (2, 3) AND exit_draw < 0.1
            THEN 'disqualified' END AS exit_kind,
       start_at,
       LEAST(gap, (timestamptz '{PERIOD_TO.isoformat()}' - start_at) / touches) AS gap,
       CASE WHEN account_draw < 0.9
            THEN 1 + LEAST(floor(account_draw / 0.9 * $3::int)::int, $3::int - 1) END
            AS account,
       engagement
FROM (
    SELECT *,
           CASE WHEN stage_draw < {FURTHEST_SHARES[0]} THEN 0
                WHEN stage_draw < {sum(FURTHEST_SHARES[:2])} THEN 1
                WHEN stage_draw < {sum(FURTHEST_SHARES[:3])} THEN 2
                WHEN stage_draw < {sum(FURTHEST_SHARES[:4])} THEN 3
                WHEN stage_draw < {sum(FURTHEST_SHARES[:5])} THEN 4
                ELSE 5 END AS furthest,
           1 + extra + (rank <= remainder)::int AS touches
    FROM (
        SELECT *, ($2::bigint - $1::int) - sum(extra) OVER () AS remainder,
               row_number() OVER (ORDER BY weight DESC) AS rank
        FROM (
            SELECT *, floor(($2::bigint - $1::int) * weight / sum(weight) OVER ())::int
                      AS extra
            FROM (
                SELECT i, random() AS stage_draw, -ln(1.0 - random()) AS weight,
                       random() AS exit_draw, random() AS account_draw,
                       timestamptz '{PERIOD_FROM.isoformat()}'
                           + random() * interval '{START_SPREAD_DAYS} days' AS start_at,
                       interval '1 hour' + random() * interval '4 days' AS gap,
                       round((random() * 100)::numeric, 2) AS engagement
                FROM generate_series(1, $1::int) AS i
            ) drawn
        ) shared
    ) topped
) sized
"""  # noqa: S608 - constants and bind parameters only

# Touch j of a lead moves it when it is the r-th moving touch: r = ceil(j * m / n),
# r < m and floor(r * n / m) = j; it then moves to stage furthest - m + 1 + r.
TOUCHES = f"""
INSERT INTO touchpoints (source, event_id, lead_key, type, occurred_at, received_at,
                         payload, topic, partition, "offset")
SELECT 'bench', e.event_id, p.lead_key, e.type, e.at, e.at + interval '2 seconds',
       jsonb_build_object(
           'event_id', e.event_id, 'type', e.type, 'occurred_at', {iso("e.at")},
           'lead_id', p.lead_key, 'channel', {pick(CHANNELS, "p.i")},
           'properties', CASE WHEN e.type = 'page_view'
                              THEN jsonb_build_object('page_url', '{FILLER_PAGE}')
                              ELSE '{{}}'::jsonb END,
           'source', 'bench', 'received_at', {iso("e.at + interval '2 seconds'")}),
       'leadstage.touchpoints.v1', p.i % 6, p.i * 1000 + j
FROM bench_plan p
CROSS JOIN LATERAL generate_series(0, p.touches - 1) AS j
CROSS JOIN LATERAL (
    SELECT (j * p.moving + p.touches - 1) / p.touches AS r
) m
CROSS JOIN LATERAL (
    SELECT {EVENT_ID.format(j="j")} AS event_id,
           p.start_at + j * p.gap AS at,
           CASE WHEN m.r < p.moving AND (m.r * p.touches) / p.moving = j
                THEN {type_of("p.furthest - p.moving + 1 + m.r", "p.i + j")}
                WHEN p.exit_kind = 'lost' AND j = p.touches - 1 THEN '{LOST[0]}'
                WHEN p.exit_kind = 'disqualified' AND j = p.touches - 1
                THEN '{DISQUALIFIED[0]}'
                ELSE {pick(FILLERS, "p.i + j")} END AS type
) e
ORDER BY e.at
"""  # noqa: S608 - constants and bind parameters only

TRANSITIONS = f"""
INSERT INTO lead_transitions (funnel, lead_key, from_stage, to_stage, kind, rule, source,
                              event_id, event_type, occurred_at, recorded_at)
SELECT '{FUNNEL.name}', lead_key, from_stage, to_stage, kind, rule, 'bench', event_id,
       event_type, occurred_at, occurred_at + interval '3 seconds'
FROM (
    SELECT p.lead_key,
           CASE WHEN r > 0 THEN {stage_name("m.position - 1")} END AS from_stage,
           {stage_name("m.position")} AS to_stage,
           CASE WHEN r = 0 THEN 'entered' ELSE 'advanced' END AS kind,
           {rule_of("m.position")} AS rule,
           {EVENT_ID.format(j="m.j")} AS event_id,
           {type_of("m.position", "p.i + m.j")} AS event_type,
           p.start_at + m.j * p.gap AS occurred_at
    FROM bench_plan p
    CROSS JOIN LATERAL generate_series(0, p.moving - 1) AS r
    CROSS JOIN LATERAL (
        SELECT (r * p.touches) / p.moving AS j, p.furthest - p.moving + 1 + r AS position
    ) m
    UNION ALL
    SELECT p.lead_key, {stage_name("p.furthest")},
           CASE p.exit_kind WHEN 'lost' THEN '{LOST[1]}' ELSE '{DISQUALIFIED[1]}' END,
           'exited',
           CASE p.exit_kind WHEN 'lost' THEN '{LOST[2]}' ELSE '{DISQUALIFIED[2]}' END,
           {EVENT_ID.format(j="p.touches - 1")},
           CASE p.exit_kind WHEN 'lost' THEN '{LOST[0]}' ELSE '{DISQUALIFIED[0]}' END,
           p.start_at + (p.touches - 1) * p.gap
    FROM bench_plan p
    WHERE p.exit_kind IS NOT NULL
) moves
ORDER BY occurred_at
"""  # noqa: S608 - constants and bind parameters only

STAGES = f"""
INSERT INTO lead_stages (funnel, lead_key, funnel_version, stage, stage_entered_at,
                         sales_ready, state, first_touch_at, last_touch_at,
                         last_event_source, last_event_id, updated_at)
SELECT '{FUNNEL.name}', p.lead_key, {FUNNEL.version}, s.stage, s.entered_at, s.sales_ready,
       jsonb_build_object(
           'stage', s.stage, 'stage_entered_at', {iso("s.entered_at")},
           'scores', jsonb_build_object('engagement', p.engagement, 'fit', (p.i % 7) * 5),
           'scores_as_of', {iso("s.last_touch_at")}, 'sales_ready', s.sales_ready,
           'fired_once', '[]'::jsonb),
       p.start_at, s.last_touch_at, 'bench', {EVENT_ID.format(j="p.touches - 1")},
       s.last_touch_at + interval '3 seconds'
FROM bench_plan p
CROSS JOIN LATERAL (
    SELECT CASE p.exit_kind WHEN 'lost' THEN '{LOST[1]}'
                            WHEN 'disqualified' THEN '{DISQUALIFIED[1]}'
                            ELSE {stage_name("p.furthest")} END AS stage,
           CASE WHEN p.exit_kind IS NOT NULL THEN p.start_at + (p.touches - 1) * p.gap
                ELSE p.start_at + ((p.moving - 1) * p.touches / p.moving) * p.gap
           END AS entered_at,
           p.start_at + (p.touches - 1) * p.gap AS last_touch_at,
           p.exit_kind IS NULL AND p.furthest IN (3, 4) AND p.engagement >= 50
               AS sales_ready
) s
ORDER BY p.start_at
"""  # noqa: S608 - constants and bind parameters only

IDENTITIES = """
INSERT INTO identities (kind, value, lead_id, created_at)
SELECT 'lead_id', lead_key, lead_key, start_at FROM bench_plan ORDER BY start_at
"""

ACCOUNTS = f"""
INSERT INTO accounts (id, domain, name, industry, employee_count, country, tier)
SELECT 'acct-' || a, 'acct' || a || '.example.com', 'Account ' || a,
       CASE WHEN random() < 0.03 THEN NULL
            ELSE ({sql_text(INDUSTRIES)})[1 + floor({len(INDUSTRIES)} * random() ^ 2)::int]
       END,
       floor(exp(random() * 9))::int,
       ({sql_text(COUNTRIES)})[1 + floor({len(COUNTRIES)} * random() ^ 2)::int],
       CASE WHEN a % 20 = 0 THEN 1 WHEN a % 5 = 0 THEN 2 END
FROM generate_series(1, $1::int) AS a
"""  # noqa: S608 - constants and bind parameters only

LEAD_ACCOUNTS = """
INSERT INTO lead_accounts (lead_id, account_id, attached_by, attached_at)
SELECT lead_key, 'acct-' || account,
       CASE WHEN i % 3 = 0 THEN 'email_domain' ELSE 'explicit' END, start_at
FROM bench_plan WHERE account IS NOT NULL
"""

TABLES = ("touchpoints", "lead_transitions", "lead_stages", "identities", "accounts")


async def generate(dsn: str, leads: int, touchpoints: int, accounts: int) -> list[Step]:
    connection = await asyncpg.connect(dsn)
    steps: list[Step] = []
    try:
        # Session settings for the load only (the server's own stay as they are).
        await connection.execute("SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'")
        await connection.execute("SET synchronous_commit = off")
        await connection.execute("SELECT setseed(0.42)")
        for name, statement, params in (
            ("plan", PLAN, (leads, touchpoints, accounts)),
            ("touchpoints", TOUCHES, ()),
            ("lead_transitions", TRANSITIONS, ()),
            ("lead_stages", STAGES, ()),
            ("identities", IDENTITIES, ()),
            ("accounts", ACCOUNTS, (accounts,)),
            ("lead_accounts", LEAD_ACCOUNTS, ()),
        ):
            started = time.perf_counter()
            status = await connection.execute(statement, *params)
            steps.append(Step(name, time.perf_counter() - started, status))
            print(f"  {name:<17}{steps[-1].seconds:8.1f} s  {status}", flush=True)
        await connection.execute("DROP TABLE bench_plan")
        started = time.perf_counter()
        # As autovacuum would have by now: statistics, visibility map, hint bits.
        await connection.execute(f"VACUUM (ANALYZE) {', '.join((*TABLES, 'lead_accounts'))}")
        steps.append(Step("vacuum analyze", time.perf_counter() - started, ""))
        print(f"  {'vacuum analyze':<17}{steps[-1].seconds:8.1f} s", flush=True)
    finally:
        await connection.close()
    return steps


@dataclass
class Step:
    name: str
    seconds: float
    status: str


# -- The two baselines' queries (same text for PostgreSQL and DuckDB) -------------------

LOOKUP_SQL = (
    "SELECT source, event_id, type, occurred_at, payload FROM touchpoints "
    "WHERE lead_key = $1 ORDER BY occurred_at"
)
SUMMARY_SQL = f"""
WITH per_lead AS (
    SELECT lead_key, min(occurred_at) AS entered_at, max(position) AS position
    FROM (SELECT lead_key, occurred_at, {position_of_type("type")} AS position
          FROM touchpoints) moves
    WHERE position IS NOT NULL
    GROUP BY lead_key
)
SELECT a.industry, p.position, count(*) AS leads
FROM per_lead p
LEFT JOIN lead_accounts la ON la.lead_id = p.lead_key
LEFT JOIN accounts a ON a.id = la.account_id
WHERE p.entered_at >= $1 AND p.entered_at < $2
GROUP BY a.industry, p.position
"""  # noqa: S608 - built from the preset's constants, no input


def reached(rows: Sequence[tuple[str | None, int, int]]) -> dict[str | None, list[int]]:
    """Industry -> leads that reached each stage (furthest at or beyond it)."""
    at_furthest: dict[str | None, list[int]] = {}
    for industry, position, count in rows:
        at_furthest.setdefault(industry, [0] * len(FUNNEL.stages))[position] += count
    return {
        industry: [sum(counts[k:]) for k in range(len(counts))]
        for industry, counts in at_furthest.items()
    }


def api_reached(summary: dict[str, Any]) -> dict[str | None, list[int]]:
    return {
        segment["value"]: [stage["reached"] for stage in segment["stages"]]
        for segment in summary["segments"]
    }


# -- Measuring -----------------------------------------------------------------------


@dataclass
class Latencies:
    name: str
    millis: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""

    def percentile(self, p: float) -> float:
        ordered = sorted(self.millis)
        if not ordered:
            return math.nan
        return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


# Requests in flight at most: more wait (counted in their latency) for a free slot, so
# the client never holds thousands of waiters in its connection pool (whose upkeep per
# waiter would take CPU from the server on the same cores).
IN_FLIGHT = 200
# Keep-alive connections of the lookups' load generator: enough for 500/s at a few ms
# each; more requests than that wait for a connection, and the wait is counted.
LOOKUP_CONNECTIONS = 32


async def open_loop(
    name: str, call: Callable[[str], Awaitable[bool]], keys: Sequence[str], rate: float
) -> Latencies:
    """One request per key, scheduled every 1/rate s whatever the earlier ones do.

    Latency runs from the scheduled time, so queueing behind a slow server counts in
    full (no coordinated omission). The client's own timer lag (a task starting after
    its scheduled time) is reported beside it.
    """
    result = Latencies(name)
    lags: list[float] = []
    slots = asyncio.Semaphore(IN_FLIGHT)
    start = time.perf_counter() + 0.05
    finished = start

    async def one(key: str, scheduled: float) -> None:
        nonlocal finished
        lags.append((time.perf_counter() - scheduled) * 1000)
        async with slots:
            ok = await call(key)
        finished = time.perf_counter()
        result.millis.append((finished - scheduled) * 1000)
        result.errors += not ok

    tasks = []
    for n, key in enumerate(keys):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(key, scheduled)))
    await asyncio.gather(*tasks)
    served = len(keys) / (finished - start)
    lag_p99 = Latencies("lag", lags).percentile(99)
    result.note = (
        f"open loop {rate:.0f}/s for {len(keys) / rate:.0f} s, served {served:.0f}/s, "
        f"client timer lag p99 {lag_p99:.1f} ms"
    )
    return result


def lookup_keys(leads: int, rate: float, seconds: float, rng: random.Random) -> list[str]:
    return [f"lead-{rng.randint(1, leads)}" for _ in range(max(int(rate * seconds), 1))]


async def lookup_runs(
    name: str,
    call: Callable[[str], Awaitable[bool]],
    loads: Sequence[Load],
    out: Measured,
    pid: int | None = None,
) -> None:
    """A warm-up, then each load in turn (the lightest first); with ``pid``, that
    process's CPU time per request too."""
    await open_loop("warm-up", call, loads[0].keys[: len(loads[0].keys) // 5], loads[0].rate)
    for load in loads:
        used = cpu_seconds(pid) if pid else 0.0
        run = await open_loop(name, call, load.keys, load.rate)
        if pid:
            used = cpu_seconds(pid) - used
            run.note += f", {used / len(load.keys) * 1000:.1f} ms CPU each"
        out.lookups[f"{name}{load.suffix}"] = run


@dataclass
class Load:
    rate: float
    keys: list[str]
    suffix: str  # "" for the target rate


async def sequential(name: str, call: Callable[[], Awaitable[Any]], runs: int) -> Latencies:
    await call()  # warm-up
    result = Latencies(name, note=f"sequential, {runs} runs after 1 warm-up")
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        result.millis.append((time.perf_counter() - started) * 1000)
    return result


@dataclass
class Measured:
    lookups: dict[str, Latencies] = field(default_factory=dict)
    summaries: dict[str, Latencies] = field(default_factory=dict)
    reached: dict[str, dict[str | None, list[int]]] = field(default_factory=dict)
    source: str = ""


async def register_funnel(url: str) -> None:
    """Register the funnel's version as active, as the engine does at start."""
    from leadstage.db.session import create_engine, create_session_factory, unit_of_work
    from leadstage.settings import ServiceSettings
    from leadstage_engine.versions import register_all

    database = create_engine(ServiceSettings(database_url=url), application_name="bench-api")
    try:
        async with unit_of_work(create_session_factory(database)) as session:
            await register_all(session, [FUNNEL], may_activate=True)
    finally:
        await database.dispose()


async def vacuum_rollup(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        # As autovacuum would have by now (the visibility map lets the summary's
        # in-progress count read the covering index alone).
        await connection.execute(
            "VACUUM (ANALYZE) lead_funnel_facts, funnel_stage_counts, funnel_stage_month_counts"
        )
    finally:
        await connection.close()


class KeepAliveClient:
    """A minimal HTTP/1.1 GET client over a fixed set of keep-alive connections.

    The lookups' load generator. httpx costs this process about a millisecond of CPU
    per request; at 500/s on two shared cores the generator itself fell behind its
    schedule (client timer lag p99 ~100 ms) and took the CPU the API needed. This
    client writes a request line and headers and reads a Content-Length body: it
    supports exactly what the API answers here, and is not a general HTTP client.
    """

    def __init__(self, base_url: str, headers: dict[str, str], connections: int) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        self._host, _, port = host_port.partition(":")
        self._port = int(port or 80)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._headers = f"Host: {host_port}\r\n{extra}"
        self._size = connections
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._opened: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> KeepAliveClient:
        for _ in range(self._size):
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._opened.append(writer)
            self._idle.put_nowait((reader, writer))
        return self

    async def __aexit__(self, *_: object) -> None:
        for writer in self._opened:
            writer.close()

    async def get_status(self, path: str) -> int:
        """GET ``path``; the response status (the body is read and dropped)."""
        reader, writer = await self._idle.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\n{self._headers}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except BaseException:
            writer.close()  # a broken connection is not given back
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._opened.append(writer)
            raise
        finally:
            self._idle.put_nowait((reader, writer))
        return status


async def measure_api(
    base_url: str,
    token: str,
    pid: int,
    loads: Sequence[Load],
    runs: int,
    out: Measured,
    *,
    raw_runs: int = 0,
) -> None:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=600
    ) as client:
        async with KeepAliveClient(base_url, headers, LOOKUP_CONNECTIONS) as lookups:

            async def lookup(key: str) -> bool:
                try:
                    return await lookups.get_status(f"/v1/leads/{key}") == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    return False

            await lookup_runs("api", lookup, loads, out, pid)

        params = {
            "breakdown": "industry",
            "from": PERIOD_FROM.isoformat(),
            "to": PERIOD_TO.isoformat(),
        }
        bodies: list[dict[str, Any]] = []

        async def summary() -> None:
            response = await client.get(f"/v1/funnels/{FUNNEL.name}/summary", params=params)
            response.raise_for_status()
            bodies.append(response.json())

        used = cpu_seconds(pid)
        out.summaries["api"] = await sequential("api", summary, runs)
        used = cpu_seconds(pid) - used
        out.summaries["api"].note += f", {used / (runs + 1) * 1000:.0f} ms CPU each"
        out.reached["api"] = api_reached(bodies[-1])
        out.source = str(bodies[-1].get("source"))
        if raw_runs:
            # One microsecond past midnight: the rollup answers whole UTC days only, so
            # this takes the recomputation (no generated lead enters at that instant).
            params["from"] = (PERIOD_FROM + timedelta(microseconds=1)).isoformat()
            out.summaries["api raw"] = await sequential("api raw", summary, raw_runs)
            if bodies[-1].get("source") != "raw" or api_reached(bodies[-1]) != out.reached["api"]:
                sys.exit("the raw summary did not recompute, or disagrees with the rollup")


async def measure_postgres(dsn: str, loads: Sequence[Load], runs: int, out: Measured) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=5, max_size=5)
    try:

        async def lookup(key: str) -> bool:
            async with pool.acquire() as connection:
                return bool(await connection.fetch(LOOKUP_SQL, key))

        await lookup_runs("postgres", lookup, loads, out)
        rows: list[tuple[str | None, int, int]] = []

        async def summary() -> None:
            async with pool.acquire() as connection:
                found = await connection.fetch(SUMMARY_SQL, PERIOD_FROM, PERIOD_TO)
            rows[:] = [tuple(row) for row in found]

        out.summaries["postgres"] = await sequential("postgres", summary, runs)
        out.reached["postgres"] = reached(rows)
    finally:
        await pool.close()


def measure_duckdb(
    folder: Path, keys: Sequence[str], lookups: int, runs: int, out: Measured
) -> None:
    with duckdb.connect() as con:
        for table in ("touchpoints", "lead_accounts", "accounts"):
            path = folder / f"{table}.parquet"
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")  # noqa: S608
        lookup_sql = LOOKUP_SQL.replace("$1", "?")
        summary_sql = SUMMARY_SQL.replace("$1", "?").replace("$2", "?")
        result = Latencies("duckdb", note=f"sequential, {lookups} lookups after 1 warm-up")
        con.execute(lookup_sql, [keys[0]]).fetchall()
        for key in keys[:lookups]:
            started = time.perf_counter()
            rows = con.execute(lookup_sql, [key]).fetchall()
            result.millis.append((time.perf_counter() - started) * 1000)
            result.errors += not rows
        out.lookups["duckdb"] = result

        summary = Latencies("duckdb", note=f"sequential, {runs} runs after 1 warm-up")
        found: list[tuple[Any, ...]] = []
        for run in range(runs + 1):
            started = time.perf_counter()
            found = con.execute(summary_sql, [utc(PERIOD_FROM), utc(PERIOD_TO)]).fetchall()
            if run:
                summary.millis.append((time.perf_counter() - started) * 1000)
        out.summaries["duckdb"] = summary
        out.reached["duckdb"] = reached([(i, int(p), int(c)) for i, p, c in found])


# -- Export to Parquet -----------------------------------------------------------------

CSV_COLUMNS = {
    "touchpoints": {
        "source": "VARCHAR",
        "event_id": "VARCHAR",
        "lead_key": "VARCHAR",
        "type": "VARCHAR",
        "occurred_at": "TIMESTAMP",
        "received_at": "TIMESTAMP",
        "payload": "VARCHAR",
        "topic": "VARCHAR",
        "partition": "INTEGER",
        "offset": "BIGINT",
    },
    "lead_accounts": {
        "lead_id": "VARCHAR",
        "account_id": "VARCHAR",
        "attached_by": "VARCHAR",
        "attached_at": "TIMESTAMP",
    },
    "accounts": {
        "id": "VARCHAR",
        "domain": "VARCHAR",
        "name": "VARCHAR",
        "industry": "VARCHAR",
        "employee_count": "INTEGER",
        "country": "VARCHAR",
        "tier": "INTEGER",
        "updated_at": "TIMESTAMP",
    },
}


async def export_csv(dsn: str, folder: Path) -> None:
    """Each table as CSV through COPY ... TO STDOUT (UTC times)."""
    connection = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})
    try:
        for table, columns in CSV_COLUMNS.items():
            # Times as UTC without a zone: DuckDB's Python client would need pytz
            # to hand back zoned ones.
            names = ", ".join(
                f'"{name}" AT TIME ZONE \'UTC\' AS "{name}"' if kind == "TIMESTAMP" else f'"{name}"'
                for name, kind in columns.items()
            )
            await connection.copy_from_query(
                f"SELECT {names} FROM {table}",  # noqa: S608 - constant names
                output=str(folder / f"{table}.csv"),
                format="csv",
                header=True,
            )
    finally:
        await connection.close()


def utc(moment: datetime) -> datetime:
    """The Parquet copy's form of a time: UTC without a zone."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def csv_to_parquet(folder: Path) -> None:
    with duckdb.connect() as con:
        for table, columns in CSV_COLUMNS.items():
            types = ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items())
            source, target = folder / f"{table}.csv", folder / f"{table}.parquet"
            copy = (
                f"COPY (SELECT * FROM read_csv('{source}', header = true, "  # noqa: S608
                f"columns = {{{types}}})) TO '{target}' (FORMAT parquet)"
            )
            con.execute(copy)
            source.unlink()


# -- The API process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and peak RSS, summed over the process and its descendants."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in found:
                found[name] += int(value.split()[0]) / 1024
    return found


def print_table(title: str, runs: dict[str, Latencies], pairs: Sequence[tuple[str, str]]) -> None:
    print(title)
    print(f"  {'':<15}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}  how")
    for name, run in runs.items():
        print(
            f"  {name:<15}{run.percentile(50):>10.1f}{run.percentile(99):>10.1f}"
            f"{run.errors:>8}  {run.note}"
        )
    for api_name, name in pairs:
        api, base = runs[api_name], runs[name]
        print(
            f"  {api_name} / {name}: p50 {api.percentile(50) / base.percentile(50):.3f}, "
            f"p99 {api.percentile(99) / base.percentile(99):.3f}; "
            f"{name} p50 / {api_name} p50 = {base.percentile(50) / api.percentile(50):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--touchpoints", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, help="default: leads / 10")
    parser.add_argument("--rate", type=float, default=500.0, help="lead lookups per second")
    parser.add_argument(
        "--light-rate",
        type=float,
        default=50.0,
        help="also measure lookups at this lighter rate first (0: do not)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="of lead lookups")
    parser.add_argument("--summary-runs", type=int, default=20)
    parser.add_argument(
        "--api-workers", type=int, default=1, help="API processes (LEADSTAGE_HTTP_WORKERS)"
    )
    parser.add_argument("--duckdb-lookups", type=int, default=200)
    parser.add_argument(
        "--raw-summary-runs",
        type=int,
        default=3,
        help="also time the summary recomputed from the transitions (0: do not)",
    )
    args = parser.parse_args()
    if args.touchpoints < args.leads:
        parser.error("every lead has at least one touchpoint: --touchpoints >= --leads")
    accounts = args.accounts or max(args.leads // 10, 1)

    postgres = services.local_postgres()
    database = f"bench_api_{secrets.token_hex(4)}"
    postgres.create_database(database)
    url = postgres.url(database)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    env = {
        **os.environ,
        "LEADSTAGE_DATABASE_URL": url,
        "LEADSTAGE_LOG_LEVEL": "WARNING",
        # The engine that stored this data ran the one funnel.
        "LEADSTAGE_FUNNELS": f'["{FUNNEL.name}"]',
    }
    cli = [sys.executable, "-m", "leadstage"]
    rng = random.Random(7)
    loads = [
        Load(rate, lookup_keys(args.leads, rate, args.seconds, rng), suffix)
        for rate, suffix in ((args.light_rate, f" {args.light_rate:.0f}/s"), (args.rate, ""))
        if rate > 0
    ]
    keys = loads[-1].keys
    measured = Measured()
    api: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        print(
            f"generating {args.leads:,} leads, {args.touchpoints:,} touchpoints, "
            f"{accounts:,} accounts",
            flush=True,
        )
        started = time.perf_counter()
        steps = uvloop.run(generate(dsn, args.leads, args.touchpoints, accounts))
        generation_s = time.perf_counter() - started
        # The rollup the summary reads: the funnel registered as the engine would, then
        # the backfill (`leadstage rollup --all`, the same rebuild a round does), timed.
        uvloop.run(register_funnel(url))
        started = time.perf_counter()
        rollup_output = subprocess.run(
            [*cli, "rollup", "--all"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        rollup_s = time.perf_counter() - started
        uvloop.run(vacuum_rollup(dsn))
        print(f"rollup backfill {rollup_s:.1f} s: {rollup_output}", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-api-") as scratch:
            folder = Path(scratch)
            started = time.perf_counter()
            uvloop.run(export_csv(dsn, folder))
            csv_s = time.perf_counter() - started
            started = time.perf_counter()
            csv_to_parquet(folder)
            parquet_s = time.perf_counter() - started
            parquet_mb = sum(p.stat().st_size for p in folder.glob("*.parquet")) / 2**20
            print(f"exported: CSV {csv_s:.1f} s, Parquet {parquet_s:.1f} s", flush=True)

            token = (
                subprocess.run(
                    [*cli, "tokens", "create", "--name", "bench", "--scopes", *SCOPES],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            port = free_port()
            api = subprocess.Popen(
                [*cli, "api"],
                env={
                    **env,
                    "LEADSTAGE_HTTP_PORT": str(port),
                    "LEADSTAGE_HTTP_WORKERS": str(args.api_workers),
                },
            )
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(f"{base_url}/readyz")
            print("measuring the api", flush=True)
            uvloop.run(
                measure_api(
                    base_url,
                    token,
                    api.pid,
                    loads,
                    args.summary_runs,
                    measured,
                    raw_runs=args.raw_summary_runs,
                )
            )
            memory = memory_mb(api.pid)
            api.terminate()
            api.wait(timeout=30)
            api = None
            print("measuring postgres", flush=True)
            uvloop.run(measure_postgres(dsn, loads, args.summary_runs, measured))
            print("measuring duckdb", flush=True)
            measure_duckdb(folder, keys, args.duckdb_lookups, args.summary_runs, measured)
        sizes = uvloop.run(table_sizes(dsn))
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        postgres.drop_database(database)

    print()
    print(
        f"{args.leads:,} leads, {args.touchpoints:,} touchpoints, {accounts:,} accounts; "
        f"funnel {FUNNEL.name}, period [{PERIOD_FROM:%Y-%m-%d}, {PERIOD_TO:%Y-%m-%d})"
    )
    print(
        f"generation {generation_s:.0f} s ("
        + ", ".join(f"{s.name} {s.seconds:.0f}" for s in steps)
        + f"); export: CSV {csv_s:.1f} s + Parquet {parquet_s:.1f} s ({parquet_mb:.0f} MB)"
    )
    print(f"rollup backfill (leadstage rollup --all, then VACUUM ANALYZE) {rollup_s:.1f} s")
    print("PostgreSQL sizes (tables + indexes): " + ", ".join(sizes))
    lookup_pairs = [("api", "postgres"), ("api", "duckdb")]
    if args.light_rate > 0:
        light = f" {args.light_rate:.0f}/s"
        lookup_pairs.insert(1, (f"api{light}", f"postgres{light}"))
    print_table(
        "GET /v1/leads/{id} vs a lead's touchpoints in time order", measured.lookups, lookup_pairs
    )
    print_table(
        "GET /v1/funnels/b2b-six-stage/summary?breakdown=industry vs furthest stage per "
        "lead from raw touchpoints, by industry",
        measured.summaries,
        [("api", "postgres"), ("api", "duckdb")]
        + (
            [("api raw", "postgres"), ("api raw", "duckdb")]
            if "api raw" in measured.summaries
            else []
        ),
    )
    print(f"summary answered from: {measured.source}")
    agree = measured.reached["api"] == measured.reached["postgres"] == measured.reached["duckdb"]
    print(f"reached-per-stage by industry agree (api, postgres, duckdb): {agree}")
    print(
        f"api processes ({args.api_workers} worker(s)) memory: RSS {memory['VmRSS']:.0f} MB, "
        f"peak {memory['VmHWM']:.0f} MB"
    )
    if not agree:
        sys.exit("the three summaries disagree")


async def table_sizes(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [
            f"{table} {await connection.fetchval(SIZE_SQL, table)}"
            for table in (*TABLES, "lead_accounts")
        ]
    finally:
        await connection.close()


SIZE_SQL = """
SELECT pg_size_pretty(coalesce(
    (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass)
     WHERE relid <> $1::regclass),
    pg_total_relation_size($1::regclass)))
"""


if __name__ == "__main__":
    main()
