"""`make run`'s command, `leadstage run`, as a user would run it: embedded, no Kafka."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from leadstage.local import services
from tests.e2e.conftest import LOGS, free_port


@pytest.mark.usefixtures("environment")  # the local PostgreSQL is up: `run` reuses it
def test_leadstage_run_serves_the_acceptance_journey(tmp_path: Path) -> None:
    database = f"leadstage_run_{secrets.token_hex(4)}"
    ingest_port, api_port, engine_port = free_port(), free_port(), free_port()
    LOGS.mkdir(exist_ok=True)
    log = LOGS / "leadstage-run.log"
    env = {
        **os.environ,
        "LEADSTAGE_LOCAL_DIR": str(tmp_path),  # credentials file of this run only
        "LEADSTAGE_LOCAL_POSTGRES_PORT": str(services.local_postgres().port),
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leadstage",
                "run",
                "--database",
                database,
                "--ingest-port",
                str(ingest_port),
                "--api-port",
                str(api_port),
                "--engine-port",
                str(engine_port),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        printed = log.read_text()
        write_key = re.search(r"write key\s+(\S+)", printed)
        api_token = re.search(r"API token\s+(\S+)", printed)
        assert write_key is not None
        assert api_token is not None
        assert (tmp_path / "dev-credentials.json").exists()

        with httpx.Client(timeout=10) as http:
            for event_type, minute in (("page_view", "00"), ("demo_requested", "05")):
                response = http.post(
                    f"http://127.0.0.1:{ingest_port}/v1/events",
                    headers={"X-Write-Key": write_key.group(1)},
                    json={
                        "type": event_type,
                        "lead_id": "lead-1",
                        "occurred_at": f"2026-11-23T10:{minute}:00Z",
                    },
                )
                assert response.status_code == 202, response.text
            posted = time.monotonic()
            while True:
                lead = http.get(
                    f"http://127.0.0.1:{api_port}/v1/leads/lead-1",
                    headers={"Authorization": f"Bearer {api_token.group(1)}"},
                )
                if lead.status_code == 200 and lead.json()["stage"] == "Action":
                    break
                assert time.monotonic() - posted < 1.0, lead.text
                time.sleep(0.05)
        assert len(lead.json()["transitions"]) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        services.local_postgres().drop_database(database)
