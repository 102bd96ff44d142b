"""event ids unique per source

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 01:55:47.750968
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Event ids become unique per source: primary keys move to (source, event_id).
    op.drop_constraint(
        op.f("fk_lead_transitions_event_id_touchpoints"), "lead_transitions", type_="foreignkey"
    )
    op.drop_constraint(
        op.f("uq_lead_transitions_funnel_event_id"), "lead_transitions", type_="unique"
    )
    op.add_column("lead_transitions", sa.Column("source", sa.String(length=255), nullable=True))
    op.execute(
        "UPDATE lead_transitions t SET source = p.source "
        "FROM touchpoints p WHERE p.event_id = t.event_id"
    )
    op.alter_column("lead_transitions", "source", nullable=False)

    op.drop_constraint(op.f("pk_touchpoints"), "touchpoints", type_="primary")
    op.create_primary_key(op.f("pk_touchpoints"), "touchpoints", ["source", "event_id"])
    op.drop_constraint(op.f("pk_ingest_dedup"), "ingest_dedup", type_="primary")
    op.create_primary_key(op.f("pk_ingest_dedup"), "ingest_dedup", ["source", "event_id"])

    op.create_unique_constraint(
        op.f("uq_lead_transitions_funnel_source_event_id"),
        "lead_transitions",
        ["funnel", "source", "event_id"],
    )
    op.create_foreign_key(
        op.f("fk_lead_transitions_source_touchpoints"),
        "lead_transitions",
        "touchpoints",
        ["source", "event_id"],
        ["source", "event_id"],
        ondelete="CASCADE",
    )


def downgrade() -> None:
    # Only possible while no event_id repeats across sources.
    op.drop_constraint(
        op.f("fk_lead_transitions_source_touchpoints"), "lead_transitions", type_="foreignkey"
    )
    op.drop_constraint(
        op.f("uq_lead_transitions_funnel_source_event_id"), "lead_transitions", type_="unique"
    )
    op.drop_constraint(op.f("pk_ingest_dedup"), "ingest_dedup", type_="primary")
    op.create_primary_key(op.f("pk_ingest_dedup"), "ingest_dedup", ["event_id"])
    op.drop_constraint(op.f("pk_touchpoints"), "touchpoints", type_="primary")
    op.create_primary_key(op.f("pk_touchpoints"), "touchpoints", ["event_id"])
    op.drop_column("lead_transitions", "source")
    op.create_unique_constraint(
        op.f("uq_lead_transitions_funnel_event_id"), "lead_transitions", ["funnel", "event_id"]
    )
    op.create_foreign_key(
        op.f("fk_lead_transitions_event_id_touchpoints"),
        "lead_transitions",
        "touchpoints",
        ["event_id"],
        ["event_id"],
        ondelete="CASCADE",
    )
