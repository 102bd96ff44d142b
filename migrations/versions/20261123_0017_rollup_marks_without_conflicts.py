"""funnel summary rollup: a mark per writer, so writers never wait for a round

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-23 22:00:00.000000

``rollup_dirty_leads`` was keyed by lead and marked with ``INSERT ... ON CONFLICT DO
UPDATE``. A round deletes the marks it takes and holds them until it commits, so an
engine batch marking one of those leads waited for the whole round (a quarter of an
engine connection's time under load). Each writer now inserts its own row (a new
``id`` key, no unique lead key): a plain insert never waits for another transaction,
and a round that takes an older mark of the lead cannot lose the writer's change,
since the writer's own, uncommitted mark is left for a later round.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("pk_rollup_dirty_leads", "rollup_dirty_leads", type_="primary")
    op.execute("ALTER TABLE rollup_dirty_leads ADD COLUMN id bigserial NOT NULL")
    op.create_primary_key("pk_rollup_dirty_leads", "rollup_dirty_leads", ["id"])


def downgrade() -> None:
    # One mark per lead again (the oldest; any one of them means the same).
    op.execute(
        "DELETE FROM rollup_dirty_leads later USING rollup_dirty_leads earlier"
        " WHERE later.lead_key = earlier.lead_key AND later.id > earlier.id"
    )
    op.drop_constraint("pk_rollup_dirty_leads", "rollup_dirty_leads", type_="primary")
    op.drop_column("rollup_dirty_leads", "id")
    op.create_primary_key("pk_rollup_dirty_leads", "rollup_dirty_leads", ["lead_key"])
