"""Ingest's connection pool: no pre-ping round trips, and still no use of a dead connection.

SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout on a pool that is
not in autocommit mode (BEGIN, an empty statement, ROLLBACK): per group commit, as many
round trips as the group's own work on the common path. Ingest does without it:

* a connection the server closed while it sat in the pool (a restarted or terminated
  backend) is known closed to asyncpg already, without a round trip: the checkout
  check (``refuse_closed_connections``) refuses it, and the pool replaces it with a new
  connection;
* a connection that breaks while a group uses it fails that group's statement; the
  intake then runs the group once more on a fresh connection, if nothing of it had
  been produced yet (see ``Intake._accept_valid``).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from leadstage.db.session import create_engine, refuse_closed_connections
from leadstage.settings import ServiceSettings


class ConnectionLostError(Exception):
    """A pooled connection broke while a group used it (the connection is discarded)."""


def create_ingest_engine(
    settings: ServiceSettings, *, application_name: str = "leadstage-ingest"
) -> AsyncEngine:
    return refuse_closed_connections(
        create_engine(settings, application_name=application_name, pre_ping=False)
    )


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` is a broken database connection (on either intake path)."""
    if isinstance(error, ConnectionLostError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated
