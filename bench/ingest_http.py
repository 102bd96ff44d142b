"""Ingest throughput and latency against the local Kafka, with two ceilings measured in
the same run:

* HTTP ceiling: a no-op FastAPI endpoint (same uvicorn settings, same bodies) that
  parses nothing and answers 202;
* broker ceiling: the same event records produced straight to Kafka with aiokafka
  (idempotent, acks=all), from this process.

Load comes from wrk (Debian package `wrk`) on loopback, 1 thread, N connections.

    .venv/bin/python bench/ingest_http.py [--seconds 10] [--connections 32] [--rounds 1]

``--rounds N`` measures the no-op endpoint and ingest N times each, alternated, and
reports every round's ratio and the median run: on a shared 2-core machine one run can
be 15-30% off, so a change of a few % needs several rounds to be seen.

Needs `make services-up`. Uses a throwaway database and topic prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from leadstage.local import services
from leadstage.local.usage import cpu_seconds
from leadstage.transport.kafka import delete_topics_with_prefix

HERE = Path(__file__).resolve().parent
EVENT = (
    '{"event_id":"%s","type":"page_view","lead_id":"lead-%d",'
    '"occurred_at":"2026-11-20T10:00:00Z","channel":"paid_search",'
    '"properties":{"page_url":"https://example.com/pricing"}}'
)

WRK_SCRIPT = """
local mode, prefix, key = "single", "x", ""
local counter = 0
function init(args)
  mode, prefix, key = args[1], args[2], args[3]
end
local function event()
  counter = counter + 1
  return string.format('%EVENT%', prefix .. "-" .. counter, counter % 10000)
end
function request()
  local body
  if mode == "batch" then
    local events = {}
    for i = 1, 100 do events[i] = event() end
    body = '{"events":[' .. table.concat(events, ",") .. ']}'
  else
    body = event()
  end
  return wrk.format("POST", nil,
    {["Content-Type"] = "application/json", ["X-Write-Key"] = key}, body)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
""".replace("%EVENT%", EVENT.replace('"', '\\"'))

NOOP_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI()
@app.post("/v1/events")
@app.post("/v1/events/batch")
async def noop(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "accepted"}, status_code=202)
"""


@dataclass
class Run:
    name: str
    requests_per_second: float
    events_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def wrk(url: str, mode: str, key: str, seconds: int, connections: int, script: Path) -> Run:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            url,
            "--",
            mode,
            secrets.token_hex(4),
            key,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, errors = map(int, line.split()[1:])
    rps = requests / (duration_us / 1e6)
    per_request = 100 if mode == "batch" else 1
    return Run(f"{mode}", rps, rps * per_request, p50_us / 1000, p99_us / 1000, errors)


INTERNALS = ("group_events", "group_seconds", "produce_seconds")


def internal_sums(url: str) -> dict[str, float]:
    """The sums and counts of ingest's own histograms: group size, group and produce
    durations (cumulative since the process started)."""
    sums: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        for name in INTERNALS:
            for suffix in ("_sum", "_count"):
                if line.startswith(f"leadstage_ingest_{name}{suffix} "):
                    sums[name + suffix] = float(line.split()[1])
    return sums


def internal_averages(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The histograms' averages over the interval between two ``internal_sums``."""
    averages: dict[str, float] = {}
    for name in INTERNALS:
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        if count:
            averages[name] = (after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)) / count
    return averages


def machine_idle() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values)


@dataclass
class Usage:
    """What one measured run cost: the server's CPU per request, the machine's idle
    share (is the run CPU-bound?), and ingest's group-commit averages."""

    cpu_us_per_request: float
    machine_idle: float
    internals: dict[str, float]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def broker_ceiling(bootstrap: str, topic: str, events: int) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    try:
        started = time.perf_counter()
        batch = []
        for n in range(events):
            value = (EVENT % (f"direct-{n}", n % 10000)).encode()
            batch.append(await producer.send(topic, value, key=f"lead-{n % 10000}".encode()))
            if len(batch) >= 1000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)
        return events / (time.perf_counter() - started)
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="alternated measurements")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")

    postgres, kafka = services.local_postgres(), services.local_kafka()
    run_id = secrets.token_hex(4)
    database = f"bench_ingest_{run_id}"
    postgres.create_database(database)
    env = {
        **os.environ,
        "LEADSTAGE_DATABASE_URL": postgres.url(database),
        "LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "LEADSTAGE_TOPIC_PREFIX": f"bench-{run_id}.",
        "LEADSTAGE_TRANSPORT": "kafka",
        "LEADSTAGE_RAW_INTAKE_ENABLED": "false",
        "LEADSTAGE_RATE_LIMIT_PER_SECOND": "10000000",
        "LEADSTAGE_LOG_LEVEL": "WARNING",
        "LEADSTAGE_DATABASE_POOL_SIZE": "20",
    }
    cli = [sys.executable, "-m", "leadstage"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "topics"], env=env, check=True, capture_output=True)
        key = (
            subprocess.run(
                [*cli, "keys", "create", "--source", "bench"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

        with tempfile.TemporaryDirectory() as scratch:
            script = Path(scratch) / "bench.lua"
            script.write_text(WRK_SCRIPT)
            (Path(scratch) / "noop_app.py").write_text(NOOP_APP)
            noop_port, ingest_port = free_port(), free_port()
            noop = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "noop_app:app",
                    "--port",
                    str(noop_port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                cwd=scratch,
                env=env,
            )
            ingest = subprocess.Popen(
                [*cli, "ingest"], env={**env, "LEADSTAGE_HTTP_PORT": str(ingest_port)}
            )
            processes += [noop, ingest]
            wait_ready(f"http://127.0.0.1:{noop_port}/docs")
            wait_ready(f"http://127.0.0.1:{ingest_port}/readyz")

            rounds: dict[str, list[Run]] = {}
            usage: dict[str, list[Usage]] = {}
            for mode in ("single", "batch"):
                # A short warm-up, then the measured run.
                wrk(
                    f"http://127.0.0.1:{ingest_port}/v1/events"
                    + ("/batch" if mode == "batch" else ""),
                    mode,
                    key,
                    2,
                    args.connections,
                    script,
                )
                for _ in range(args.rounds):
                    for target, port, server in (
                        ("noop", noop_port, noop),
                        ("ingest", ingest_port, ingest),
                    ):
                        path = "/v1/events/batch" if mode == "batch" else "/v1/events"
                        metrics_url = f"http://127.0.0.1:{ingest_port}/metrics"
                        sums, cpu, idle = (
                            internal_sums(metrics_url),
                            cpu_seconds(server.pid),
                            machine_idle(),
                        )
                        run = wrk(
                            f"http://127.0.0.1:{port}{path}",
                            mode,
                            key,
                            args.seconds,
                            args.connections,
                            script,
                        )
                        idle_after = machine_idle()
                        requests = run.requests_per_second * args.seconds
                        used = Usage(
                            cpu_us_per_request=(cpu_seconds(server.pid) - cpu) / requests * 1e6,
                            machine_idle=(idle_after[0] - idle[0]) / (idle_after[1] - idle[1]),
                            internals=(
                                internal_averages(sums, internal_sums(metrics_url))
                                if target == "ingest"
                                else {}
                            ),
                        )
                        rounds.setdefault(f"{target} {mode}", []).append(run)
                        usage.setdefault(f"{target} {mode}", []).append(used)
            rss = peak_rss_mb(ingest.pid)
        direct = asyncio.run(
            broker_ceiling(kafka.bootstrap_servers, f"bench-{run_id}.touchpoints.v1", 100_000)
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        postgres.drop_database(database)
        asyncio.run(delete_topics_with_prefix(kafka.bootstrap_servers, f"bench-{run_id}."))

    results = {name: median_run(runs) for name, runs in rounds.items()}
    print(
        f"wrk -t1 -c{args.connections} -d{args.seconds}s, one ingest process, local Kafka"
        + (f", median of {args.rounds} alternated rounds" if args.rounds > 1 else "")
    )
    print(f"{'run':<15}{'req/s':>10}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, run in results.items():
        print(
            f"{name:<15}{run.requests_per_second:>10,.0f}{run.events_per_second:>12,.0f}"
            f"{run.p50_ms:>9.1f}{run.p99_ms:>9.1f}{run.errors:>8}"
        )
    print(f"{'direct aiokafka':<15}{'':>10}{direct:>12,.0f}")
    ratios = {
        mode: [
            ingest_run.requests_per_second / noop_run.requests_per_second
            for noop_run, ingest_run in zip(
                rounds[f"noop {mode}"], rounds[f"ingest {mode}"], strict=True
            )
        ]
        for mode in ("single", "batch")
    }
    for mode, label in (("single", "single events"), ("batch", "batched events")):
        each = " ".join(f"{ratio:.2f}" for ratio in ratios[mode])
        print(
            f"{label} vs no-op endpoint (req/s): {statistics.median(ratios[mode]):.2f}"
            + (f" (rounds: {each})" if args.rounds > 1 else "")
        )
    if args.rounds > 1:
        batched = " ".join(f"{run.events_per_second:,.0f}" for run in rounds["ingest batch"])
        print(f"batched events/s, rounds: {batched}")
    batch = results["ingest batch"]
    print(f"batched events vs direct aiokafka (events/s): {batch.events_per_second / direct:.2f}")
    print(f"ingest peak RSS: {rss:.0f} MB")
    for name, used_runs in usage.items():
        for used in used_runs:
            print(
                f"{name}: {used.cpu_us_per_request:.0f} us of server CPU per request, "
                f"machine {used.machine_idle:.0%} idle"
                + "".join(f", {stat} {value:.4g}" for stat, value in used.internals.items())
            )
    json.dump(
        {k: vars(v) for k, v in results.items()}
        | {
            "rounds": {k: [vars(r) for r in runs] for k, runs in rounds.items()},
            "usage": {k: [vars(u) for u in runs] for k, runs in usage.items()},
            "direct": direct,
            "rss_mb": rss,
        },
        sys.stderr,
    )


def median_run(runs: list[Run]) -> Run:
    """The run with the median request rate (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: run.requests_per_second)
    return ordered[(len(ordered) - 1) // 2]


if __name__ == "__main__":
    main()
