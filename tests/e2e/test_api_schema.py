"""Schemathesis against the metrics API's own OpenAPI schema: generated requests for
every operation (valid and invalid parameters), with a token that has every scope,
must never get a server error, and the responses must match the documented schemas.

The API runs for real (the e2e stack, on the real PostgreSQL) with data in it from the
other e2e tests of the session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import leadstage_cli
from tests.e2e.conftest import Stack, last_line

REPORTS = Path(__file__).resolve().parents[1] / "artifacts" / "schemathesis"


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
def test_no_operation_answers_a_server_error(stack: Stack) -> None:
    token = last_line(
        leadstage_cli(
            "tokens",
            "create",
            "--name",
            "schemathesis",
            "--scopes",
            "leads:read",
            "metrics:read",
            "inputs:write",
            env=stack.env,
        )
    )
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{stack.api.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20261123",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(REPORTS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
