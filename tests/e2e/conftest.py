"""Fixtures that run the real service processes, as `leadstage ingest|engine|api`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import leadstage.funnels
from leadstage.funnels import parse_funnel
from tests.conftest import Environment, leadstage_cli

LOGS = Path(__file__).resolve().parents[1] / "artifacts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Service:
    role: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def start_service(
    role: str, env: dict[str, str], name: str, *, wait_for: str = "/readyz"
) -> Service:
    """Start ``leadstage <role>`` and wait until ``wait_for`` answers 200 (``/healthz``
    for a service that is expected never to become ready)."""
    port = free_port()
    LOGS.mkdir(exist_ok=True)
    log = LOGS / f"{name}-{role}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadstage", role],
            env={**os.environ, **env, "LEADSTAGE_HTTP_PORT": str(port)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    service = Service(role, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{role} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{service.url}{wait_for}", timeout=1).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    service.stop(signal.SIGKILL)
    raise RuntimeError(f"{role} not ready in 60s:\n{log.read_text()[-3000:]}")


@dataclass
class Stack:
    ingest: Service
    engine: Service
    api: Service
    write_key: str
    api_token: str
    env: dict[str, str]

    @property
    def write_headers(self) -> dict[str, str]:
        return {"X-Write-Key": self.write_key}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


@pytest.fixture(scope="session", params=["kafka", "postgres"])
def stack(request: pytest.FixtureRequest, environment: Environment) -> Iterator[Stack]:
    """All three services on one transport: the real Kafka, or the embedded event log."""
    transport: str = request.param
    env = {
        **environment.variables(transport),
        # Each transport's engine keeps its own positions.
        "LEADSTAGE_CONSUMER_GROUP": f"e2e-{transport}",
        "LEADSTAGE_WRITE_KEY_CACHE_SECONDS": "0",
        "LEADSTAGE_WEBHOOK_FIRST_RETRY_SECONDS": "0.05",
    }
    write_key = last_line(leadstage_cli("keys", "create", "--source", "e2e", env=env))
    api_token = last_line(
        leadstage_cli("tokens", "create", "--name", "e2e", "--scopes", "leads:read", env=env)
    )
    services: list[Service] = []
    try:
        for role in ("engine", "ingest", "api"):
            services.append(start_service(role, env, f"{transport}"))
        engine, ingest, api = services
        yield Stack(ingest, engine, api, write_key, api_token, env)
    finally:
        for service in reversed(services):
            service.stop()


@dataclass
class MetricsApi:
    """A metrics API process of its own, with a metrics:read token."""

    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


PRESETS_DIR = Path(leadstage.funnels.__file__).parent / "presets"

#: The analytics tests' funnels: b2b-six-stage and decision-journey (regressions and
#: loops) under names no other test uses. The reports count every lead of a funnel
#: (an old lead still in a stage is an open stay of any later period), so other tests'
#: leads in the shared test database must not be in them.
ANALYTICS_COPIES = {"analytics-b2b": "b2b-six-stage", "analytics-dj": "decision-journey"}
ANALYTICS_FUNNELS = {
    copy: parse_funnel(
        (PRESETS_DIR / f"{preset}.yaml")
        .read_text(encoding="utf-8")
        .replace(f"name: {preset}", f"name: {copy}", 1),
        f"{copy}.yaml",
    )
    for copy, preset in ANALYTICS_COPIES.items()
}


@pytest.fixture(scope="session")
def analytics_api(
    environment: Environment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsApi]:
    """The metrics API with the analytics funnels active, on the embedded transport;
    analytics tests feed the engine's apply_batch."""
    funnels_dir = tmp_path_factory.mktemp("analytics-funnels")
    for copy, preset in ANALYTICS_COPIES.items():
        (funnels_dir / f"{copy}.yaml").write_text(
            (PRESETS_DIR / f"{preset}.yaml")
            .read_text(encoding="utf-8")
            .replace(f"name: {preset}", f"name: {copy}", 1),
            encoding="utf-8",
        )
    env = {
        **environment.variables("postgres"),
        "LEADSTAGE_FUNNELS": json.dumps(sorted(ANALYTICS_COPIES)),
        "LEADSTAGE_FUNNELS_DIR": str(funnels_dir),
    }
    token = last_line(
        leadstage_cli(
            "tokens", "create", "--name", "analytics", "--scopes", "metrics:read", env=env
        )
    )
    api = start_service("api", env, "analytics")
    try:
        yield MetricsApi(api.url, token)
    finally:
        api.stop()
