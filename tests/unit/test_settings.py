from __future__ import annotations

import pytest
from pydantic import ValidationError

from leadstage.settings import ApiSettings, IngestSettings


def test_production_refuses_a_placeholder_database_password() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        IngestSettings(
            environment="production",
            database_url="postgresql+asyncpg://leadstage:changeme@db:5432/leadstage",
        )


def test_production_refuses_a_missing_database_password() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        ApiSettings(
            environment="production",
            database_url="postgresql+asyncpg://leadstage@db:5432/leadstage",
        )


def test_production_accepts_a_real_password_and_development_accepts_none() -> None:
    strong = IngestSettings(
        environment="production",
        database_url="postgresql+asyncpg://leadstage:Vq3-x9Lr0@db:5432/leadstage",
    )
    assert strong.database_password.get_secret_value() == "Vq3-x9Lr0"
    assert "Vq3" not in repr(strong.database_password)
    assert IngestSettings().environment == "development"


def test_settings_are_frozen_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEADSTAGE_TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("LEADSTAGE_HTTP_PORT", "9001")
    settings = IngestSettings()
    assert settings.touchpoints_topic == "acme.touchpoints.v1"
    assert settings.http_port == 9001
    with pytest.raises(ValidationError):
        settings.http_port = 1  # type: ignore[misc]
