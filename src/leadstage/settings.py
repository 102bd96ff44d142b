"""Typed configuration: one frozen pydantic-settings class per service.

Every value comes from an environment variable prefixed ``LEADSTAGE_`` (see the
README's configuration table). The defaults are the local development setup
that ``make run`` and ``make services-up`` start on loopback; production points
the same code at external PostgreSQL and Kafka by URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PostgresDsn, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from leadstage.funnels import Funnel

#: Passwords that must never reach production: they ship in examples and docs.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "password", "postgres", "secret"})

LOCAL_POSTGRES_PORT = 55432
LOCAL_KAFKA_PORT = 59092

Transport = Literal["kafka", "postgres"]


class ServiceSettings(BaseSettings):
    """Fields every LeadStage process shares. Not used directly: see the subclasses."""

    model_config = SettingsConfigDict(env_prefix="LEADSTAGE_", frozen=True, extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: PostgresDsn = Field(
        default=PostgresDsn(
            f"postgresql+asyncpg://postgres@127.0.0.1:{LOCAL_POSTGRES_PORT}/leadstage"
        ),
        description="SQLAlchemy URL of the PostgreSQL database (asyncpg driver).",
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=100,
        description=(
            "Connections each pool keeps open. A pool opens no more than this: more "
            "concurrent requests wait for a free connection (see the timeout)."
        ),
    )
    database_pool_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Wait this long for a free connection, then fail."
    )
    transport: Transport = Field(
        default="kafka",
        description="Event transport: 'kafka', or 'postgres' (the embedded event log).",
    )
    kafka_bootstrap_servers: str = f"127.0.0.1:{LOCAL_KAFKA_PORT}"
    topic_prefix: str = Field(
        default="leadstage.",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every topic name (lets test runs and tenants share a broker).",
    )
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(
        default=1, ge=1, le=16, description="Replicas per topic partition (3 in production)."
    )
    funnels_dir: Path | None = Field(
        default=None,
        description="Directory of funnel definitions (*.yaml), over the shipped presets.",
    )
    funnels: list[str] = Field(
        default=["b2b-six-stage", "aida"],
        description="The active funnels: every lead is tracked in each of them.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    http_host: str = "127.0.0.1"

    @property
    def touchpoints_topic(self) -> str:
        return f"{self.topic_prefix}touchpoints.v1"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}touchpoints.dlq.v1"

    @property
    def lead_stage_changed_topic(self) -> str:
        """Where the engine publishes every stage change (LeadStageChanged, ...)."""
        return f"{self.topic_prefix}lead-stage-changed.v1"

    @property
    def account_stage_changed_topic(self) -> str:
        """Where the engine publishes account changes (AccountStageChanged, ...)."""
        return f"{self.topic_prefix}account-stage-changed.v1"

    @property
    def raw_touchpoints_topic(self) -> str:
        """Where tools that produce straight to Kafka write raw JSON for ingest to check."""
        return f"{self.topic_prefix}touchpoints.raw.v1"

    @property
    def database_password(self) -> SecretStr:
        hosts = self.database_url.hosts()
        return SecretStr(hosts[0].get("password") or "" if hosts else "")

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_production(self) -> ServiceSettings:
        if self.environment != "production":
            return self
        for name, secret in self._secrets().items():
            if secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    f"{name} is empty or a placeholder; refusing to start in production"
                )
        return self

    def active_funnels(self) -> dict[str, Funnel]:
        """The active funnel definitions (loading validates them: a bad file is refused
        with its file, line and field)."""
        from leadstage.funnels import load_funnels

        known = load_funnels(self.funnels_dir)
        unknown = [name for name in self.funnels if name not in known]
        if unknown:
            raise ValueError(
                f"LEADSTAGE_FUNNELS names unknown funnels {unknown}; known: {sorted(known)}"
            )
        return {name: known[name] for name in self.funnels}

    def _secrets(self) -> dict[str, SecretStr]:
        return {"LEADSTAGE_DATABASE_URL password": self.database_password}


class IngestSettings(ServiceSettings):
    """`leadstage ingest`: the HTTP front door for touchpoints."""

    http_port: int = Field(default=8081, ge=1, le=65535)
    max_body_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Largest body of a single-event request."
    )
    max_batch_body_bytes: int = Field(default=500 * 1024, ge=1024)
    max_batch_events: int = Field(default=500, ge=1, le=10_000)
    max_event_bytes: int = Field(default=32 * 1024, ge=256)
    max_nesting_depth: int = Field(default=8, ge=1, le=64)
    max_properties: int = Field(default=200, ge=1, description="Fields per event, all levels.")
    max_future_seconds: int = Field(
        default=86_400, ge=0, description="How far in the future occurred_at may be."
    )
    timestamp_horizon_days: int = Field(
        default=730, ge=1, description="How far in the past occurred_at may be."
    )
    rate_limit_per_second: int = Field(
        default=2_000, ge=1, description="Events per second per write key, unless the key sets one."
    )
    dedup_window_days: int = Field(
        default=30, ge=7, description="How long an event_id is remembered (at least 7 days)."
    )
    raw_intake_enabled: bool = Field(
        default=True, description="Consume the raw topic (Kafka transport only)."
    )
    raw_intake_group: str = "leadstage-ingest-raw"
    segment_event_types: dict[str, str] = Field(
        default_factory=dict,
        description="Segment track event names mapped to touchpoint types, over the defaults; "
        'JSON, e.g. {"Pricing Viewed": "page_view", "Booth Scan": "custom:booth_scan"}.',
    )
    group_commit_workers: int = Field(
        # 3 since the early answer (docs/benchmarks.md, session 8): fewer workers make
        # bigger groups; 2 gave the same single-event rate, 4 a lower one.
        default=3,
        ge=1,
        le=64,
        description="Intake transactions running at once.",
    )
    produce_timeout_seconds: float = Field(default=5.0, gt=0)
    max_in_flight: int = Field(default=20_000, ge=1)
    retry_after_seconds: int = Field(default=5, ge=1)
    write_key_cache_seconds: float = Field(default=30.0, ge=0)


class EngineSettings(ServiceSettings):
    """`leadstage engine`: the stage engine consumer."""

    http_port: int = Field(default=8082, ge=1, le=65535)
    consumer_group: str = "leadstage-stage-engine"
    batch_max_records: int = Field(default=500, ge=1)
    batch_lanes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Batches folded at once, each over its own partitions in its own "
        "PostgreSQL transaction: while one waits for the database, another runs. Each "
        "lane holds one of the pool's connections while it folds.",
    )
    webhooks_enabled: bool = True
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_first_retry_seconds: float = Field(default=0.5, ge=0)
    poll_timeout_ms: int = Field(default=200, ge=1)
    sweep_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the engine looks for identity merges and account links "
        "committed after the events that caused them were folded.",
    )
    rollup_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the engine rolls the changed leads up into the funnel "
        "summary's aggregates (LEADSTAGE_ROLLUP_INTERVAL_SECONDS).",
    )
    rollup_batch_leads: int = Field(
        default=5000, ge=1, description="Changed leads one rollup round takes at most."
    )


class ApiSettings(ServiceSettings):
    """`leadstage api`: lead lookups and funnel metrics."""

    http_port: int = Field(default=8080, ge=1, le=65535)
    http_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes sharing the port (uvicorn workers). The API keeps no "
        "state between requests, so lookups scale with processes up to the cores.",
    )
    history_page_max: int = Field(default=500, ge=1)
    token_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a verified API token is remembered (and so how long a "
        "revocation may take to reach this process); 0 checks every request.",
    )
    funnel_refresh_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the API re-reads the funnel version registry, so that a "
        "replay's switch-over changes the stages it describes.",
    )
