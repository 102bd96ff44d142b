"""funnel versions and replays

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-23 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _lead_columns() -> list[sa.Column[object]]:
    """Who and which version, for the replay tables."""
    return [
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("lead_key", sa.String(length=262), nullable=False),
    ]


def _caused_by_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=120), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "funnel_versions",
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("source_file", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("replay_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'replaying', 'active', 'retired')",
            name=op.f("ck_funnel_versions_status"),
        ),
        sa.PrimaryKeyConstraint("funnel", "version", name=op.f("pk_funnel_versions")),
    )
    op.create_index(
        "ix_funnel_versions_one_active",
        "funnel_versions",
        ["funnel"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "replay_lead_stages",
        *_lead_columns(),
        sa.Column("stage", sa.String(length=100), nullable=True),
        sa.Column("stage_entered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sales_ready", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "state",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("first_touch_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_touch_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_source", sa.String(length=255), nullable=True),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint(
            "funnel", "version", "lead_key", name=op.f("pk_replay_lead_stages")
        ),
    )
    op.create_table(
        "replay_lead_transitions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        *_lead_columns(),
        sa.Column("from_stage", sa.String(length=100), nullable=True),
        sa.Column("to_stage", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        *_caused_by_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replay_lead_transitions")),
    )
    op.create_index(
        "ix_replay_lead_transitions_lead",
        "replay_lead_transitions",
        ["funnel", "version", "lead_key"],
        unique=False,
    )
    op.create_table(
        "replay_lead_score_changes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        *_lead_columns(),
        sa.Column("score", sa.String(length=100), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        *_caused_by_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replay_lead_score_changes")),
    )
    op.create_index(
        "ix_replay_lead_score_changes_lead",
        "replay_lead_score_changes",
        ["funnel", "version", "lead_key"],
        unique=False,
    )
    op.create_table(
        "replay_changed_leads",
        *_lead_columns(),
        sa.Column(
            "marked_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "funnel", "version", "lead_key", name=op.f("pk_replay_changed_leads")
        ),
    )


def downgrade() -> None:
    op.drop_table("replay_changed_leads")
    op.drop_index("ix_replay_lead_score_changes_lead", table_name="replay_lead_score_changes")
    op.drop_table("replay_lead_score_changes")
    op.drop_index("ix_replay_lead_transitions_lead", table_name="replay_lead_transitions")
    op.drop_table("replay_lead_transitions")
    op.drop_table("replay_lead_stages")
    op.drop_index("ix_funnel_versions_one_active", table_name="funnel_versions")
    op.drop_table("funnel_versions")
