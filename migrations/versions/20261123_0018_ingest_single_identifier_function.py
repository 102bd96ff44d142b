"""ingest: claim, lock and resolve a group of single-identifier events in one call

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-23 23:30:00.000000

Ingest's common group (every event carries one identifier: a lead id or an anonymous
id, and no email, account or alias) took three or four statements, each a round trip
from the ingest process: claim the event ids and lock the identifiers, read the
identifiers' owners, insert the new ones. This function runs the same statements, in
the same order, inside the caller's transaction, in one round trip.

Each statement of a VOLATILE PL/pgSQL function takes a new snapshot (READ COMMITTED),
so the owners are read after the locks are held and see every commit of a group that
held them before, as they did when they were separate statements.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The arguments: the event ids to claim (sorted, distinct); the identifier lock names
# (as ``identity.lock_names`` builds them); one row per event: its source, id, its one
# identifier (kind, value) and the lead that identifier names if nobody owns it yet.
# The rows returned: each claimed (source, event_id), with the other columns NULL; then
# each claimed event's identifier with its owner (kind, value, lead_id), the first two
# columns NULL. Unclaimed events (duplicates) are locked, as before, but not resolved.
UPGRADE = r"""
CREATE FUNCTION ingest_claim_single_identifiers(
    claim_sources text[],
    claim_event_ids text[],
    lock_names text[],
    event_sources text[],
    event_ids text[],
    identifier_kinds text[],
    identifier_values text[],
    unowned_leads text[]
) RETURNS TABLE (
    claimed_source text, claimed_event_id text, kind text, value text, lead_id text
)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    claimed_sources text[];
    claimed_ids text[];
BEGIN
    -- The event log's acknowledgement makes the events durable, not this commit.
    PERFORM set_config('synchronous_commit', 'off', true);

    -- 1. Claim the event ids (a concurrent claim of the same id waits for its owner).
    WITH claimed AS (
        INSERT INTO ingest_dedup AS d (source, event_id)
        SELECT * FROM unnest(claim_sources, claim_event_ids)
        ON CONFLICT (source, event_id) DO NOTHING
        RETURNING d.source, d.event_id
    )
    SELECT array_agg(c.source), array_agg(c.event_id)
    INTO claimed_sources, claimed_ids
    FROM claimed AS c;

    -- 2. Lock the identifiers, in the one order every path takes them.
    PERFORM pg_advisory_xact_lock(hashtextextended(names.name, 0))
    FROM unnest(lock_names) AS names(name)
    ORDER BY names.name;

    RETURN QUERY
    SELECT c.source::text, c.event_id::text, NULL::text, NULL::text, NULL::text
    FROM unnest(claimed_sources, claimed_ids) AS c(source, event_id);

    -- 3. Owners of the claimed events' identifiers; an unowned one is owned from now on
    -- by the lead it names (no other writer can insert it: its lock is held).
    RETURN QUERY
    WITH wanted AS (
        SELECT DISTINCT e.kind, e.value, e.lead
        FROM unnest(event_sources, event_ids, identifier_kinds, identifier_values,
                    unowned_leads) AS e(source, event_id, kind, value, lead)
        JOIN unnest(claimed_sources, claimed_ids) AS c(source, event_id)
          ON c.source = e.source AND c.event_id = e.event_id
    ), owned AS (
        SELECT i.kind, i.value, i.lead_id
        FROM identities AS i
        JOIN wanted AS w ON i.kind = w.kind AND i.value = w.value
    ), inserted AS (
        INSERT INTO identities AS i (kind, value, lead_id)
        SELECT w.kind, w.value, w.lead
        FROM wanted AS w
        WHERE NOT EXISTS (
            SELECT FROM owned AS o WHERE o.kind = w.kind AND o.value = w.value
        )
        ORDER BY w.kind, w.value
        ON CONFLICT DO NOTHING
        RETURNING i.kind, i.value, i.lead_id
    )
    SELECT NULL::text, NULL::text, o.kind::text, o.value::text, o.lead_id::text
    FROM owned AS o
    UNION ALL
    SELECT NULL::text, NULL::text, n.kind::text, n.value::text, n.lead_id::text
    FROM inserted AS n;
END
$function$
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION ingest_claim_single_identifiers"
        "(text[], text[], text[], text[], text[], text[], text[], text[])"
    )
