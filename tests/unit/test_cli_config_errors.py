"""Bad configuration stops a service at start with a message naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadstage", role],
        env={**os.environ, **env, "LEADSTAGE_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:1/x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_invalid_funnel_file_is_refused_with_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(
        """name: broken
version: 1
stages:
  - {name: A, group: tofu}
  - {name: B, group: mofu}
  - {name: C, group: bofu}
rules:
  - name: r
    priority: 1
    when: {type: page_view}
    then: {move_to: Nowhere}
"""
    )
    result = run(
        "engine", {"LEADSTAGE_FUNNELS_DIR": str(tmp_path), "LEADSTAGE_FUNNELS": '["broken"]'}
    )
    assert result.returncode == 2
    assert "broken.yaml:11:" in result.stderr
    assert "move_to" in result.stderr
    assert "Nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_placeholder_password_in_production_is_refused() -> None:
    result = run(
        "api",
        {
            "LEADSTAGE_ENVIRONMENT": "production",
            "LEADSTAGE_DATABASE_URL": "postgresql+asyncpg://leadstage:changeme@db:5432/leadstage",
        },
    )
    assert result.returncode == 2
    assert "placeholder" in result.stderr
