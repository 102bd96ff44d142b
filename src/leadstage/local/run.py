"""``leadstage run`` (``make run``): every service on this machine, in one command.

By default the embedded mode: a real PostgreSQL from the pip wheel, and the
PostgreSQL-backed event log in place of Kafka. ``--transport kafka`` uses the
broker that ``leadstage services up`` started. The services are the same
processes production runs; only their environment differs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from leadstage.credentials import ALL_SCOPES
from leadstage.db.session import create_engine, create_session_factory, unit_of_work
from leadstage.local import local_dir
from leadstage.local.services import local_kafka, local_postgres
from leadstage.settings import ServiceSettings


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def ensure_dev_credentials(settings: ServiceSettings, path: Path) -> dict[str, str]:
    """A development write key and API token, created on first start and kept in ``path``."""
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    stored = asyncio.run(_valid_dev_credentials(settings, stored))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(stored, indent=2) + "\n")
    return stored


async def _valid_dev_credentials(
    settings: ServiceSettings, stored: dict[str, str]
) -> dict[str, str]:
    from leadstage import credentials

    stored = dict(stored)
    database = create_engine(settings, application_name="leadstage-run")
    sessions = create_session_factory(database)
    try:
        async with unit_of_work(sessions) as session:
            key = stored.get("write_key")
            if not key or await credentials.find_write_key(session, key) is None:
                stored["write_key"] = (await credentials.create_write_key(session, "dev")).secret
            token = stored.get("api_token")
            if not token or await credentials.find_api_token(session, token) is None:
                issued = await credentials.create_api_token(session, "dev", list(ALL_SCOPES))
                stored["api_token"] = issued.secret
        return stored
    finally:
        await database.dispose()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def run_all(
    *, transport: str, ingest_port: int, api_port: int, engine_port: int, database: str
) -> int:
    postgres = local_postgres()
    postgres.start()
    postgres.create_database(database)
    env = {
        **os.environ,
        "LEADSTAGE_DATABASE_URL": postgres.url(database),
        "LEADSTAGE_TRANSPORT": transport,
        "LEADSTAGE_LOG_FORMAT": os.environ.get("LEADSTAGE_LOG_FORMAT", "text"),
    }
    if transport == "kafka":
        broker = local_kafka()
        if not broker.is_running():
            _say("Kafka is not running: `make services-up` first (or use the embedded mode).")
            return 1
        env["LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
    os.environ.update(env)  # for the migrate/topics/credentials steps below
    cli = [sys.executable, "-m", "leadstage"]
    subprocess.run([*cli, "migrate"], check=True, env=env)  # noqa: S603
    subprocess.run([*cli, "topics"], check=True, env=env)  # noqa: S603
    credentials_file = local_dir() / "dev-credentials.json"
    dev = ensure_dev_credentials(ServiceSettings(), credentials_file)

    ports = {"ingest": ingest_port, "engine": engine_port, "api": api_port}
    processes = {
        role: subprocess.Popen(  # noqa: S603
            [*cli, role], env={**env, "LEADSTAGE_HTTP_PORT": str(port)}
        )
        for role, port in ports.items()
    }

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for role, port in ports.items():
            _wait_ready(f"http://127.0.0.1:{port}/readyz", processes[role])
        _say(
            "\nLeadStage is running "
            f"({'embedded event log in PostgreSQL' if transport == 'postgres' else 'Kafka'}):\n"
            f"  ingest       http://127.0.0.1:{ingest_port}   (docs: /docs)\n"
            f"  metrics-api  http://127.0.0.1:{api_port}   (docs: /docs)\n"
            f"  write key    {dev['write_key']}\n"
            f"  API token    {dev['api_token']}\n"
            f"  (stored in {credentials_file})\n"
            "Try:\n"
            f"  curl -X POST http://127.0.0.1:{ingest_port}/v1/events "
            f"-H 'X-Write-Key: {dev['write_key']}' -H 'Content-Type: application/json' "
            '-d \'{"type":"page_view","lead_id":"lead-1",'
            '"occurred_at":"2026-11-23T10:00:00Z"}\'\n'
            f"  curl http://127.0.0.1:{api_port}/v1/leads/lead-1 "
            f"-H 'Authorization: Bearer {dev['api_token']}'\n"
            "Ctrl-C stops everything.\n"
        )
        while all(process.poll() is None for process in processes.values()):
            time.sleep(0.5)
        failed = [role for role, process in processes.items() if process.poll() is not None]
        _say(f"service(s) exited: {', '.join(failed)}; stopping the others")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                process.kill()
