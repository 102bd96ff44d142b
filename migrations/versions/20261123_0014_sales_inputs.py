"""sales inputs: quotas, marketing spend and deal forecasts, versioned; sales-event indexes

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 12:00:00.000000

Chained after 0013 (touchpoints partitioned by month): the two partial indexes on
``touchpoints`` are created on the partitioned table, so every month's partition
gets them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _written() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "written_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "sales_quotas",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("owner_kind", sa.String(length=10), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=19, scale=4), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_written(),
        sa.Column("written_by_token_id", sa.BigInteger(), nullable=False),
        sa.Column("written_by", sa.String(length=255), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_sales_quotas_amount_not_negative")),
        sa.CheckConstraint(
            "owner_kind IN ('rep', 'team')", name=op.f("ck_sales_quotas_owner_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sales_quotas")),
        sa.UniqueConstraint(
            "owner_kind",
            "owner_id",
            "period",
            "version",
            name=op.f("uq_sales_quotas_owner_kind_owner_id_period_version"),
        ),
    )
    op.create_table(
        "marketing_spend",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=19, scale=4), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        *_written(),
        sa.Column("written_by_token_id", sa.BigInteger(), nullable=False),
        sa.Column("written_by", sa.String(length=255), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_marketing_spend_amount_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketing_spend")),
        sa.UniqueConstraint(
            "period", "channel", "version", name=op.f("uq_marketing_spend_period_channel_version")
        ),
    )
    op.create_table(
        "deal_forecasts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("deal_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("expected_close_date", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=19, scale=4), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("rep", sa.String(length=255), nullable=True),
        sa.Column("team", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        *_written(),
        sa.Column("written_by_token_id", sa.BigInteger(), nullable=True),
        sa.Column("written_by", sa.String(length=255), nullable=False),
        sa.Column("event_source", sa.String(length=255), nullable=True),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_deal_forecasts_amount_not_negative")),
        sa.CheckConstraint("source IN ('api', 'event')", name=op.f("ck_deal_forecasts_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deal_forecasts")),
        sa.UniqueConstraint("deal_id", "version", name=op.f("uq_deal_forecasts_deal_id_version")),
        sa.UniqueConstraint(
            "event_source", "event_id", name=op.f("uq_deal_forecasts_event_source_event_id")
        ),
    )
    op.create_index(
        op.f("ix_deal_forecasts_expected_close_date"),
        "deal_forecasts",
        ["expected_close_date"],
        unique=False,
    )
    op.create_index(
        "ix_touchpoints_sales_events",
        "touchpoints",
        ["type", "occurred_at"],
        unique=False,
        postgresql_where=sa.text(
            "type IN ('deal_won', 'deal_lost', 'purchase', 'renewal', 'upsell', 'churned')"
        ),
    )
    op.create_index(
        "ix_touchpoints_forecast_events",
        "touchpoints",
        ["occurred_at"],
        unique=False,
        postgresql_where=sa.text("(payload -> 'properties') ? 'expected_close_date'"),
    )


def downgrade() -> None:
    op.drop_index("ix_touchpoints_forecast_events", table_name="touchpoints")
    op.drop_index("ix_touchpoints_sales_events", table_name="touchpoints")
    op.drop_index(op.f("ix_deal_forecasts_expected_close_date"), table_name="deal_forecasts")
    op.drop_table("deal_forecasts")
    op.drop_table("marketing_spend")
    op.drop_table("sales_quotas")
