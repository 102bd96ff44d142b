"""funnel summary rollup: counts per entry month next to the counts per entry day

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23 16:00:00.000000

Filled from ``funnel_stage_counts`` under the rollup rounds' advisory lock, so a round
running meanwhile cannot apply a delta to the day counts that the month counts miss.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "funnel_stage_month_counts",
        sa.Column("funnel", sa.String(length=100), nullable=False),
        sa.Column("dimension", sa.String(length=20), nullable=False),
        sa.Column("entered_month", sa.Date(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("furthest_position", sa.Integer(), nullable=False),
        sa.Column("current_state", sa.String(length=100), nullable=True),
        sa.Column("units", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_funnel_stage_month_counts_key",
        "funnel_stage_month_counts",
        ["funnel", "dimension", "entered_month", "value", "furthest_position", "current_state"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.execute("SELECT pg_advisory_xact_lock(hashtextextended('leadstage-rollup', 0))")
    op.execute(
        "INSERT INTO funnel_stage_month_counts"
        " (funnel, dimension, entered_month, value, furthest_position, current_state, units)"
        " SELECT funnel, dimension, date_trunc('month', entered_day)::date, value,"
        "  furthest_position, current_state, sum(units)"
        " FROM funnel_stage_counts GROUP BY 1, 2, 3, 4, 5, 6"
    )


def downgrade() -> None:
    op.drop_index("ix_funnel_stage_month_counts_key", table_name="funnel_stage_month_counts")
    op.drop_table("funnel_stage_month_counts")
