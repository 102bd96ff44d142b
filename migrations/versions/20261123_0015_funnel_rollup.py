"""funnel summary rollup: dirty leads, per-lead facts, counts per funnel/day/segment

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23 14:00:00.000000

The tables start empty and no funnel has a ``funnel_rollups`` row: the first rollup
round (the engine's periodic task, or ``leadstage rollup``) rebuilds every funnel with
an active version from the stored transitions, and the summary reads the raw tables
until then. So the migration itself stays quick on a large database.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEGMENTS = ("industry", "size_band", "country", "tier", "channel", "campaign", "source")


def upgrade() -> None:
    op.create_table(
        "rollup_dirty_leads",
        sa.Column("lead_key", sa.String(length=262), nullable=False),
        sa.Column(
            "marked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("lead_key", name=op.f("pk_rollup_dirty_leads")),
    )
    op.create_table(
        "funnel_rollups",
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("funnel_version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("aggregated_through", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("funnel", name=op.f("pk_funnel_rollups")),
    )
    op.create_table(
        "lead_funnel_facts",
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("lead_key", sa.String(length=262), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entered_day", sa.Date(), nullable=False),
        sa.Column("furthest_position", sa.Integer(), nullable=False),
        sa.Column("current_state", sa.String(length=100), nullable=True),
        sa.Column("last_touch_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exited", sa.Boolean(), nullable=False),
        sa.Column("account_id", sa.String(length=262), nullable=True),
        *(sa.Column(name, sa.Text(), nullable=True) for name in SEGMENTS),
        sa.PrimaryKeyConstraint("funnel", "lead_key", name=op.f("pk_lead_funnel_facts")),
    )
    op.create_index(
        "ix_lead_funnel_facts_active",
        "lead_funnel_facts",
        ["funnel", "last_touch_at"],
        unique=False,
        postgresql_where=sa.text("NOT exited"),
        postgresql_include=["entered_at", "furthest_position", *SEGMENTS],
    )
    op.create_table(
        "funnel_stage_counts",
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("dimension", sa.String(length=20), nullable=False),
        sa.Column("entered_day", sa.Date(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("furthest_position", sa.Integer(), nullable=False),
        sa.Column("current_state", sa.String(length=100), nullable=True),
        sa.Column("units", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_funnel_stage_counts_key",
        "funnel_stage_counts",
        ["funnel", "dimension", "entered_day", "value", "furthest_position", "current_state"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )


def downgrade() -> None:
    op.drop_index("ix_funnel_stage_counts_key", table_name="funnel_stage_counts")
    op.drop_table("funnel_stage_counts")
    op.drop_index("ix_lead_funnel_facts_active", table_name="lead_funnel_facts")
    op.drop_table("lead_funnel_facts")
    op.drop_table("funnel_rollups")
    op.drop_table("rollup_dirty_leads")
