"""A service whose background work fails exits with status 1, so supervisors restart it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import Environment
from tests.e2e.conftest import free_port


def test_an_engine_whose_consume_loop_fails_exits_with_status_1(
    environment: Environment,
) -> None:
    env = {
        **os.environ,
        **environment.variables("kafka"),
        # Nothing listens there: the consume loop cannot join its group and fails.
        "LEADSTAGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "LEADSTAGE_CONSUMER_GROUP": "exit-test",
        "LEADSTAGE_HTTP_PORT": str(free_port()),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "leadstage", "engine"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output[-3000:]  # not 143: no SIGTERM raised again
    assert "task stage-engine failed; stopping the process" in output
    assert "Application shutdown complete" in output  # a clean shutdown first
