"""touchpoints partitioned by month of occurred_at

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 04:10:00

The table becomes ``PARTITION BY RANGE (occurred_at)`` with one partition per calendar
month (UTC) and a DEFAULT partition for anything outside the months created. The
primary key gains ``occurred_at`` (PostgreSQL requires the partition key in every
unique constraint), which still deduplicates a redelivered record: a record's
``occurred_at`` never changes once ingest stamped it.

``ensure_touchpoint_partitions(first, last)`` creates the missing monthly partitions
in a range; the engine calls it at start and every few hours. It skips a month the
DEFAULT partition already holds rows for (PostgreSQL refuses such a partition), so
those rows stay, correctly, in the default.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
COLUMNS = (
    "source, event_id, lead_key, type, occurred_at, received_at, payload, topic, "
    'partition, "offset"'
)
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENSURE_FUNCTION = """
CREATE OR REPLACE FUNCTION ensure_touchpoint_partitions(first_month date, last_month date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month date := date_trunc('month', first_month)::date;
    created integer := 0;
    partition_name text;
    lower_bound timestamptz;
    upper_bound timestamptz;
BEGIN
    -- One creator at a time: two engines starting together must not race.
    PERFORM pg_advisory_xact_lock(hashtext('leadstage.touchpoint_partitions'));
    WHILE month <= last_month LOOP
        partition_name := format('touchpoints_%s', to_char(month, 'YYYY_MM'));
        lower_bound := month::timestamp AT TIME ZONE 'UTC';
        upper_bound := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF to_regclass(partition_name) IS NULL AND NOT EXISTS (
            SELECT 1 FROM touchpoints_default
            WHERE occurred_at >= lower_bound AND occurred_at < upper_bound
        ) THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF touchpoints FOR VALUES FROM (%L) TO (%L)',
                partition_name, lower_bound, upper_bound
            );
            created := created + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN created;
END
$$
"""


def upgrade() -> None:
    # Transitions no longer reference touchpoints by a foreign key: one would have to
    # carry occurred_at too, and it would stop old months' partitions from being
    # detached or dropped. The engine writes both in one transaction.
    op.drop_constraint(
        "fk_lead_transitions_source_touchpoints", "lead_transitions", type_="foreignkey"
    )
    op.execute("ALTER TABLE touchpoints RENAME TO touchpoints_unpartitioned")
    op.execute("ALTER INDEX pk_touchpoints RENAME TO pk_touchpoints_unpartitioned")
    op.execute("ALTER INDEX ix_touchpoints_lead_time RENAME TO ix_touchpoints_unpartitioned_lt")
    op.execute(
        """
        CREATE TABLE touchpoints (
            source varchar(255) NOT NULL,
            event_id varchar(255) NOT NULL,
            lead_key varchar(262) NOT NULL,
            type varchar(120) NOT NULL,
            occurred_at timestamptz NOT NULL,
            received_at timestamptz NOT NULL,
            payload jsonb NOT NULL,
            topic varchar(249) NOT NULL,
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            CONSTRAINT pk_touchpoints PRIMARY KEY (source, event_id, occurred_at)
        ) PARTITION BY RANGE (occurred_at)
        """
    )
    op.execute("CREATE INDEX ix_touchpoints_lead_time ON touchpoints (lead_key, occurred_at)")
    op.execute("CREATE TABLE touchpoints_default PARTITION OF touchpoints DEFAULT")
    op.execute(ENSURE_FUNCTION)
    # Months of the stored data, and the two years before and the quarter after now
    # (ingest's default horizon is 730 days).
    op.execute(
        """
        SELECT ensure_touchpoint_partitions(
            LEAST(
                (SELECT min(occurred_at) FROM touchpoints_unpartitioned),
                now() - interval '25 months'
            )::date,
            GREATEST(
                (SELECT max(occurred_at) FROM touchpoints_unpartitioned),
                now() + interval '3 months'
            )::date
        )
        """
    )
    op.execute(
        f"INSERT INTO touchpoints ({COLUMNS}) SELECT {COLUMNS} FROM touchpoints_unpartitioned"  # noqa: S608
    )
    op.execute("DROP TABLE touchpoints_unpartitioned")


def downgrade() -> None:
    op.execute("ALTER TABLE touchpoints RENAME TO touchpoints_partitioned")
    op.execute("ALTER INDEX pk_touchpoints RENAME TO pk_touchpoints_partitioned")
    op.execute("ALTER INDEX ix_touchpoints_lead_time RENAME TO ix_touchpoints_partitioned_lt")
    op.execute(
        """
        CREATE TABLE touchpoints (
            source varchar(255) NOT NULL,
            event_id varchar(255) NOT NULL,
            lead_key varchar(262) NOT NULL,
            type varchar(120) NOT NULL,
            occurred_at timestamptz NOT NULL,
            received_at timestamptz NOT NULL,
            payload jsonb NOT NULL,
            topic varchar(249) NOT NULL,
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            CONSTRAINT pk_touchpoints PRIMARY KEY (source, event_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_touchpoints_lead_time ON touchpoints (lead_key, occurred_at)")
    op.execute(
        f"INSERT INTO touchpoints ({COLUMNS}) SELECT {COLUMNS} FROM touchpoints_partitioned "  # noqa: S608
        "ON CONFLICT (source, event_id) DO NOTHING"
    )
    op.execute("DROP TABLE touchpoints_partitioned")
    op.create_foreign_key(
        "fk_lead_transitions_source_touchpoints",
        "lead_transitions",
        "touchpoints",
        ["source", "event_id"],
        ["source", "event_id"],
        ondelete="CASCADE",
    )
    op.execute("DROP FUNCTION ensure_touchpoint_partitions(date, date)")
