"""``leadstage migrate``: Alembic's ``upgrade head`` with the service's database URL."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

from leadstage.settings import ServiceSettings


def alembic_config(database_url: str) -> Config:
    """alembic.ini from LEADSTAGE_ALEMBIC_CONFIG, the working directory, or the checkout."""
    candidates = [
        os.environ.get("LEADSTAGE_ALEMBIC_CONFIG"),
        Path.cwd() / "alembic.ini",
        Path(__file__).resolve().parents[2] / "alembic.ini",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            config = Config(str(candidate))
            config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
            config.attributes["configure_logging"] = False
            return config
    raise FileNotFoundError("alembic.ini not found; set LEADSTAGE_ALEMBIC_CONFIG")


def upgrade(settings: ServiceSettings, revision: str = "head") -> None:
    command.upgrade(alembic_config(str(settings.database_url)), revision)
