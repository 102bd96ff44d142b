"""SQLAlchemy models: the one description of LeadStage's tables.

Alembic migrations under ``migrations/`` create these tables; nothing calls
``create_all`` outside of Alembic's autogenerate comparison.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table(model: type[Base]) -> Table:
    """A model's Core table: bulk statements on it skip the ORM's per-row bookkeeping."""
    return cast(Table, model.__table__)


class WriteKey(Base):
    """A source's key for posting touchpoints. Only its SHA-256 is stored."""

    __tablename__ = "write_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Browser origins allowed to post with this key (CORS); empty: none.
    allowed_origins: Mapped[list[str]] = mapped_column(
        ARRAY(String(255)), server_default="{}", default=list
    )
    # Events per second this key may send; NULL: the service default.
    rate_limit_per_second: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ApiToken(Base):
    """A bearer token for the metrics API. Only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class StoredTouchpoint(Base):
    """Every touchpoint the engine consumed, once (the primary key deduplicates),
    partitioned by month of ``occurred_at``.

    Event ids are unique per source: two sources may both number their events
    1, 2, 3 without one suppressing the other's.
    """

    __tablename__ = "touchpoints"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262))
    type: Mapped[str] = mapped_column(String(120))
    # In the key because the table is partitioned by it (PostgreSQL requires the
    # partition key in every unique constraint). A record's occurred_at never changes
    # once ingest stamped it, so (source, event_id) still deduplicates redeliveries.
    occurred_at: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # A lead's history in event time: refolds and counted-window rules read it.
        Index("ix_touchpoints_lead_time", "lead_key", "occurred_at"),
        # One partition per UTC month (migration 0013, ensure_touchpoint_partitions):
        # queries over a period read only its months, and old months can be detached.
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )


class LeadStage(Base):
    """A lead's current position in one funnel."""

    __tablename__ = "lead_stages"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True)
    funnel_version: Mapped[int | None] = mapped_column(Integer)
    # NULL while the lead has touches (and maybe scores) but no stage in this funnel.
    stage: Mapped[str | None] = mapped_column(String(100))
    stage_entered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    sales_ready: Mapped[bool] = mapped_column(server_default=text("false"), default=False)
    # The funnel's whole LeadState (scores, their as-of time, once-only rules fired).
    state: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    first_touch_at: Mapped[datetime] = mapped_column(Timestamp)
    last_touch_at: Mapped[datetime] = mapped_column(Timestamp)
    # The last event folded into this state, with last_touch_at its event-time
    # key: a new event that sorts before it is late and makes the engine refold.
    last_event_source: Mapped[str | None] = mapped_column(String(255))
    last_event_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_lead_stages_funnel_stage", "funnel", "stage"),)


class LeadTransition(Base):
    """One stage change of a lead in a funnel, with the event that caused it."""

    __tablename__ = "lead_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    funnel: Mapped[str] = mapped_column(String(100))
    lead_key: Mapped[str] = mapped_column(String(262))
    from_stage: Mapped[str | None] = mapped_column(String(100))
    to_stage: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    rule: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        # One event moves a lead at most once per funnel: a redelivered event
        # can never add a second transition.
        # No foreign key to touchpoints (migration 0013): it would block detaching
        # old months' partitions; the engine writes both in one transaction.
        UniqueConstraint("funnel", "source", "event_id"),
        Index("ix_lead_transitions_lead", "funnel", "lead_key", "occurred_at", "id"),
    )


class ConsumerOffset(Base):
    """The next offset a consumer group reads, committed with the state it produced."""

    __tablename__ = "consumer_offsets"

    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class EventLogHead(Base):
    """Embedded transport: the next offset of each partition of the event log.

    Appenders lock this row (``UPDATE ... RETURNING``), so offsets are handed
    out and become visible in order: a reader never sees offset n+1 before n.
    """

    __tablename__ = "event_log_heads"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)


class EventLogRecord(Base):
    """Embedded transport: one record of the PostgreSQL-backed event log."""

    __tablename__ = "event_log"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    appended_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class IngestDedup(Base):
    """An event_id ingest has accepted: a repeat inside the window is a duplicate.

    Written in the same transaction that waits for the broker's ack, so an event
    the broker refused leaves no row behind and its retry is accepted.
    """

    __tablename__ = "ingest_dedup"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    accepted_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now(), index=True)


class Identity(Base):
    """One identifier of a person (lead_id, email, anonymous_id) and the lead it belongs to."""

    __tablename__ = "identities"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    value: Mapped[str] = mapped_column(String(262), primary_key=True)
    lead_id: Mapped[str] = mapped_column(String(262), index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class IdentityMerge(Base):
    """Lead ``from_lead`` was merged into ``into_lead``; ``moved`` lists the identities
    re-pointed, so the merge can be reverted."""

    __tablename__ = "identity_merges"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    from_lead: Mapped[str] = mapped_column(String(262), index=True)
    into_lead: Mapped[str] = mapped_column(String(262), index=True)
    reason: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(255))
    moved: Mapped[list[list[str]]] = mapped_column(JSONB)
    # Indexed: the engine's merge sweep reads the recent merges.
    merged_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now(), index=True)
    reverted_at: Mapped[datetime | None] = mapped_column(Timestamp)


class MergedLead(Base):
    """A lead the engine merged into another after an identity merge: its touchpoints
    now belong to ``into_lead`` (always the final lead of a chain of merges), and its
    own state and history rows are gone. Its events still in flight follow it."""

    __tablename__ = "merged_leads"

    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True)
    into_lead: Mapped[str] = mapped_column(String(262), index=True)
    merge_id: Mapped[int] = mapped_column(BigInteger)  # identity_merges.id
    reason: Mapped[str] = mapped_column(String(40))


class Account(Base):
    """A company (buying group); contacts attach to it by id, group call or email domain."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(262), primary_key=True)
    domain: Mapped[str | None] = mapped_column(String(253), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    industry: Mapped[str | None] = mapped_column(String(255))
    employee_count: Mapped[int | None] = mapped_column(Integer)
    country: Mapped[str | None] = mapped_column(String(2))
    tier: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class LeadAccount(Base):
    """Which account a lead (contact) belongs to."""

    __tablename__ = "lead_accounts"

    lead_id: Mapped[str] = mapped_column(String(262), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(262), index=True)
    attached_by: Mapped[str] = mapped_column(String(20))
    # Indexed: the engine's membership sweep reads the recently (re)attached contacts.
    attached_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now(), index=True)


class AccountContact(Base):
    """A contact the engine counts in its account's state (its view of ``lead_accounts``).

    The engine writes these rows with the account state they produced, so a lead
    attached after the fact (or moved) shows up as a difference from ``lead_accounts``
    and its accounts are refolded. A lead may transiently have rows in two accounts
    while a move is being reconciled.
    """

    __tablename__ = "account_contacts"

    account_id: Mapped[str] = mapped_column(String(262), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True, index=True)


class AccountStage(Base):
    """An account's position in one funnel, derived from its contacts by the funnel's
    account rule. A pure function of its contacts' transitions (see the engine)."""

    __tablename__ = "account_stages"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(262), primary_key=True)
    funnel_version: Mapped[int | None] = mapped_column(Integer)
    # NULL while no contact counts for a stage (none entered yet, or all exited).
    stage: Mapped[str | None] = mapped_column(String(100))
    stage_entered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    contacts: Mapped[int] = mapped_column(Integer)
    contacts_without_stage: Mapped[int] = mapped_column(Integer)
    # Contacts per current stage or exit state, e.g. {"Awareness": 3, "Lost": 1}.
    contacts_by_stage: Mapped[dict[str, int]] = mapped_column(JSONB)
    # Account transitions so far (the last one's seq).
    transitions: Mapped[int] = mapped_column(Integer)
    # The last contact transition folded, in the account's order (occurred_at, lead,
    # source, event_id): a contact transition sorting before it makes the engine refold.
    last_contact_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_contact_lead: Mapped[str | None] = mapped_column(String(262))
    last_contact_source: Mapped[str | None] = mapped_column(String(255))
    last_contact_event_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (Index("ix_account_stages_funnel_stage", "funnel", "stage"),)


class AccountTransition(Base):
    """One stage change of an account in a funnel, with the contact event that caused it."""

    __tablename__ = "account_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    funnel: Mapped[str] = mapped_column(String(100))
    account_id: Mapped[str] = mapped_column(String(262))
    # Position in the account's history in this funnel, from 1.
    seq: Mapped[int] = mapped_column(Integer)
    from_stage: Mapped[str | None] = mapped_column(String(100))
    to_stage: Mapped[str | None] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    lead_key: Mapped[str] = mapped_column(String(262))
    source: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    # The AccountStageChanged change_id this transition was published with.
    change_id: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (UniqueConstraint("funnel", "account_id", "seq"),)


class OutboxRecord(Base):
    """A change to publish, written in the transaction that made it (transactional outbox).

    The relay publishes unpublished rows in id order and then marks them; a crash in
    between publishes a row again, with the same ``change_id`` for consumers to drop.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[bytes] = mapped_column(LargeBinary)
    change_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    )


class LeadScoreChange(Base):
    """One change of one of a lead's scores, with the rule and event behind it."""

    __tablename__ = "lead_score_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    funnel: Mapped[str] = mapped_column(String(100))
    lead_key: Mapped[str] = mapped_column(String(262))
    score: Mapped[str] = mapped_column(String(100))
    delta: Mapped[float] = mapped_column(Double)
    value: Mapped[float] = mapped_column(Double)
    rule: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index("ix_lead_score_changes_lead", "funnel", "lead_key", "occurred_at"),)


class WebhookSubscription(Base):
    """An HTTP endpoint (e.g. a CRM) that receives published changes, signed with HMAC.

    The signing secret is stored as given: the service needs it to sign.
    """

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(255))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)), server_default="{}")
    funnels: Mapped[list[str]] = mapped_column(ARRAY(String(100)), server_default="{}")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WebhookDeadLetter(Base):
    """A change a subscription did not accept after every retry."""

    __tablename__ = "webhook_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    change_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(1000))
    failed_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


# -- Funnel versions and replays (issue #4) ---------------------------------------


class FunnelVersion(Base):
    """One version of a funnel definition, as the engine first saw it.

    ``(funnel, version)`` names one definition for good: a file that changes
    without a version bump is refused, so ``lead_stages.funnel_version`` says which
    definition (``fingerprint``) produced a state. ``status``: ``pending`` (known,
    not running), ``replaying`` (``leadstage replay`` is recomputing every lead with
    it), ``active`` (what the engine folds with; one per funnel), ``retired``.
    ``replay_started_at`` is set while a replay runs (also of the active version):
    the engine then notes the leads it changes for the replay to catch up.
    """

    __tablename__ = "funnel_versions"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # The definition file's text: the version can run or be replayed after its file changed.
    definition: Mapped[str] = mapped_column(Text)
    source_file: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(20))
    replay_started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    activated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'replaying', 'active', 'retired')", name="status"),
        Index(
            "ix_funnel_versions_one_active",
            "funnel",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
    )


class ReplayLeadStage(Base):
    """A lead's state in a funnel version being replayed (shadow of ``lead_stages``)."""

    __tablename__ = "replay_lead_stages"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True)
    stage: Mapped[str | None] = mapped_column(String(100))
    stage_entered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    sales_ready: Mapped[bool] = mapped_column(server_default=text("false"), default=False)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    first_touch_at: Mapped[datetime] = mapped_column(Timestamp)
    last_touch_at: Mapped[datetime] = mapped_column(Timestamp)
    last_event_source: Mapped[str | None] = mapped_column(String(255))
    last_event_id: Mapped[str | None] = mapped_column(String(255))


class ReplayLeadTransition(Base):
    """A stage change computed by a replay (shadow of ``lead_transitions``)."""

    __tablename__ = "replay_lead_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    funnel: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    lead_key: Mapped[str] = mapped_column(String(262))
    from_stage: Mapped[str | None] = mapped_column(String(100))
    to_stage: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    rule: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index("ix_replay_lead_transitions_lead", "funnel", "version", "lead_key"),)


class ReplayLeadScoreChange(Base):
    """A score change computed by a replay (shadow of ``lead_score_changes``)."""

    __tablename__ = "replay_lead_score_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    funnel: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    lead_key: Mapped[str] = mapped_column(String(262))
    score: Mapped[str] = mapped_column(String(100))
    delta: Mapped[float] = mapped_column(Double)
    value: Mapped[float] = mapped_column(Double)
    rule: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index("ix_replay_lead_score_changes_lead", "funnel", "version", "lead_key"),)


class ReplayChangedLead(Base):
    """A lead the live engine changed while a replay ran: the replay folds it again."""

    __tablename__ = "replay_changed_leads"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


# --- Sales inputs: what events do not carry (quotas, spend, forecasts) --------------
# Append-only and versioned: a write adds a version row and never updates one, so
# every figure can be traced to who stated it and when.

Money = Numeric(19, 4)


class SalesQuota(Base):
    """One version of a rep's or team's sales quota for a period (``2026-Q3``, ``2026-07``)."""

    __tablename__ = "sales_quotas"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    owner_kind: Mapped[str] = mapped_column(String(10))
    owner_id: Mapped[str] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(7))
    version: Mapped[int] = mapped_column(Integer)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    written_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    written_by_token_id: Mapped[int] = mapped_column(BigInteger)
    written_by: Mapped[str] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("owner_kind", "owner_id", "period", "version"),
        CheckConstraint("owner_kind IN ('rep', 'team')", name="owner_kind"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )


class MarketingSpend(Base):
    """One version of the marketing spend on a channel in a period."""

    __tablename__ = "marketing_spend"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    period: Mapped[str] = mapped_column(String(7))
    channel: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    written_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    written_by_token_id: Mapped[int] = mapped_column(BigInteger)
    written_by: Mapped[str] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("period", "channel", "version"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )


class DealForecast(Base):
    """One version of a deal's forecast: expected close date and amount.

    ``as_of`` is when the forecast was made (a deal event's time, or the API write's,
    or a backfilled time); metrics read the forecast as it stood at a moment by it.
    A version recorded from a deal event names that event, once.
    """

    __tablename__ = "deal_forecasts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    deal_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    expected_close_date: Mapped[date] = mapped_column(Date, index=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str | None] = mapped_column(String(3))
    rep: Mapped[str | None] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(10))
    as_of: Mapped[datetime] = mapped_column(Timestamp)
    written_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    written_by_token_id: Mapped[int | None] = mapped_column(BigInteger)
    written_by: Mapped[str] = mapped_column(String(255))
    event_source: Mapped[str | None] = mapped_column(String(255))
    event_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("deal_id", "version"),
        UniqueConstraint("event_source", "event_id"),
        CheckConstraint("source IN ('api', 'event')", name="source"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )


# Sales metrics read deal, revenue and churn events, and forecasts carried by events,
# out of all touchpoints: partial indexes keep those reads off the page views.
SALES_EVENT_TYPES = ("deal_won", "deal_lost", "purchase", "renewal", "upsell", "churned")
SALES_EVENTS_PREDICATE = text(
    "type IN (" + ", ".join(f"'{kind}'" for kind in SALES_EVENT_TYPES) + ")"
)
FORECAST_EVENTS_PREDICATE = text("(payload -> 'properties') ? 'expected_close_date'")
Index(
    "ix_touchpoints_sales_events",
    StoredTouchpoint.type,
    StoredTouchpoint.occurred_at,
    postgresql_where=SALES_EVENTS_PREDICATE,
)
Index(
    "ix_touchpoints_forecast_events",
    StoredTouchpoint.occurred_at,
    postgresql_where=FORECAST_EVENTS_PREDICATE,
)


# --- Funnel summary rollup (issue #5, migration 0015) --------------------------------
# The funnel summary reads these instead of recomputing every lead from its transitions;
# leadstage.rollup keeps them equal to that recomputation (see docs/architecture.md).


class RollupDirtyLead(Base):
    """A lead whose contribution to the rollup may have changed since it was last rolled up.

    Marked in the transaction of the change (engine batch, merge, replay, account link or
    firmographics); taken and deleted by :func:`leadstage.rollup.roll_up`.
    """

    __tablename__ = "rollup_dirty_leads"

    # A row per mark, not per lead: writers insert without a conflict to wait on (a
    # round holds the marks it takes until it commits). Migration 0017.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    lead_key: Mapped[str] = mapped_column(String(262))
    marked_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


class FunnelRollup(Base):
    """A funnel the rollup maintains, and the definition its figures were computed with.

    The summary reads the rollup only when ``fingerprint`` is its own funnel's: a
    replay's switch-over deletes the row, and the next round rebuilds the funnel.
    """

    __tablename__ = "funnel_rollups"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    funnel_version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    rebuilt_at: Mapped[datetime] = mapped_column(Timestamp)
    # The start of the last round that found no more pending leads: changes committed
    # before it are counted.
    aggregated_through: Mapped[datetime] = mapped_column(Timestamp)


class LeadFunnelFact(Base):
    """What one lead contributes to a funnel's summary, as of its last roll-up."""

    __tablename__ = "lead_funnel_facts"

    funnel: Mapped[str] = mapped_column(String(100), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(262), primary_key=True)
    entered_at: Mapped[datetime] = mapped_column(Timestamp)  # first transition in the funnel
    entered_day: Mapped[date] = mapped_column(Date)  # its UTC date
    furthest_position: Mapped[int] = mapped_column(Integer)  # 0-based, exits have none
    current_state: Mapped[str | None] = mapped_column(String(100))  # stage or exit now
    last_touch_at: Mapped[datetime] = mapped_column(Timestamp)
    # In an exit (or in no stage): never "in progress", whatever its last touch.
    exited: Mapped[bool] = mapped_column()
    account_id: Mapped[str | None] = mapped_column(String(262))
    industry: Mapped[str | None] = mapped_column(Text)
    size_band: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    tier: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(Text)
    campaign: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The summary's "in progress" count reads only the recently touched leads still
        # in a stage, from the index alone.
        Index(
            "ix_lead_funnel_facts_active",
            "funnel",
            "last_touch_at",
            postgresql_where=text("NOT exited"),
            postgresql_include=[
                "entered_at",
                "furthest_position",
                "industry",
                "size_band",
                "country",
                "tier",
                "channel",
                "campaign",
                "source",
            ],
        ),
    )


class FunnelStageCount(Base):
    """Leads of a funnel by entry day, furthest stage and current state, in total
    (``dimension`` '') and per value of each breakdown dimension (NULL: no value)."""

    __tablename__ = "funnel_stage_counts"

    funnel: Mapped[str] = mapped_column(String(100))
    dimension: Mapped[str] = mapped_column(String(20))
    entered_day: Mapped[date] = mapped_column(Date)
    value: Mapped[str | None] = mapped_column(Text)
    furthest_position: Mapped[int] = mapped_column(Integer)
    current_state: Mapped[str | None] = mapped_column(String(100))
    units: Mapped[int] = mapped_column(BigInteger)  # > 0: a row reaching 0 is deleted

    __table_args__ = (
        Index(
            "ix_funnel_stage_counts_key",
            "funnel",
            "dimension",
            "entered_day",
            "value",
            "furthest_position",
            "current_state",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )
    __mapper_args__ = {  # noqa: RUF012 - SQLAlchemy's declarative attribute
        "primary_key": [
            funnel,
            dimension,
            entered_day,
            value,
            furthest_position,
            current_state,
        ]
    }


class FunnelStageMonthCount(Base):
    """``funnel_stage_counts`` summed by entry month (``entered_month``: the month's
    first day), kept by the same rollup deltas: a summary over whole months reads one
    row where the day counts hold up to 31 (only the period's partial months at either
    end are read by day)."""

    __tablename__ = "funnel_stage_month_counts"

    funnel: Mapped[str] = mapped_column(String(100))
    dimension: Mapped[str] = mapped_column(String(20))
    entered_month: Mapped[date] = mapped_column(Date)
    value: Mapped[str | None] = mapped_column(Text)
    furthest_position: Mapped[int] = mapped_column(Integer)
    current_state: Mapped[str | None] = mapped_column(String(100))
    units: Mapped[int] = mapped_column(BigInteger)  # > 0: a row reaching 0 is deleted

    __table_args__ = (
        Index(
            "ix_funnel_stage_month_counts_key",
            "funnel",
            "dimension",
            "entered_month",
            "value",
            "furthest_position",
            "current_state",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )
    __mapper_args__ = {  # noqa: RUF012 - SQLAlchemy's declarative attribute
        "primary_key": [
            funnel,
            dimension,
            entered_month,
            value,
            furthest_position,
            current_state,
        ]
    }
