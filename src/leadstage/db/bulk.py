"""Writing a batch's rows in one statement, without SQLAlchemy's per-row work.

The stage engine writes about a thousand rows per batch into half a dozen tables.
SQLAlchemy's ``executemany`` form builds and processes a parameter set per row in
Python (about a tenth of the engine's CPU in a profile); these helpers hand the rows
to asyncpg as a ``COPY`` or as one array per column, which asyncpg encodes in C.
Both run on the session's connection, inside its transaction: they never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from operator import itemgetter
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import JSON, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from leadstage import compact_json

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


async def copy_rows(session: AsyncSession, into: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows with one ``COPY`` on the session's connection, in its transaction.

    COPY sends the rows in one round trip, without per-row statement parameters. Rows
    keep their order, so serial ids are assigned as the equivalent ``INSERT`` would.
    Every row has the keys of the first. Call it after a statement of the transaction
    (the driver begins it with the first one)."""
    if not rows:
        return
    columns = list(rows[0])
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:
        raise RuntimeError("the session's connection is closed")
    values = itemgetter(*columns)
    records = (
        [values(row) for row in rows] if len(columns) > 1 else [(row[columns[0]],) for row in rows]
    )
    try:
        await driver.copy_records_to_table(into.name, records=records, columns=columns)
    except asyncpg.PostgresError as error:
        # Raised by the driver directly, not through SQLAlchemy: wrap it as SQLAlchemy
        # wraps a statement's error, so that callers handle a failed COPY like any other
        # statement (the engine retries a batch that lost a race with another
        # transaction, and quarantines a record PostgreSQL refuses).
        raise DBAPIError.instance(
            f"COPY {into.name}", None, error, asyncpg.PostgresError
        ) from error


async def upsert_rows(
    session: AsyncSession,
    into: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    on_conflict: str = "update",
) -> None:
    """``INSERT ... ON CONFLICT (key)`` the rows as one statement over column arrays.

    ``on_conflict="update"`` overwrites every other column given (and ``updated_at``
    with ``now()`` when the table has one); ``"nothing"`` keeps the stored row. Every
    row has the keys of the first, and (for updates) no two rows share a key: one
    statement cannot update a row twice. JSON columns take Python values, encoded here
    with orjson (None is SQL NULL, not JSON ``null``). The statement's text depends only
    on the table and the columns, so the driver prepares it once per connection whatever
    the number of rows.
    """
    if not rows:
        return
    columns = tuple(rows[0])
    statement, json_columns = _upsert_statement(into, columns, tuple(key), on_conflict)
    arrays: dict[str, list[Any]] = {}
    for column in columns:
        if column in json_columns:
            arrays[column] = [
                None if row[column] is None else compact_json.dumps(row[column]).decode()
                for row in rows
            ]
        else:
            arrays[column] = [row[column] for row in rows]
    await session.execute(statement, arrays)


@cache
def _upsert_statement(
    into: Table, columns: tuple[str, ...], key: tuple[str, ...], on_conflict: str
) -> tuple[TextClause, frozenset[str]]:
    json_columns = frozenset(c for c in columns if isinstance(into.c[c].type, JSON))
    arrays, selected = [], []
    for column in columns:
        if column in json_columns:
            arrays.append(f"CAST(:{column} AS text[])")
            selected.append(f"CAST({_quote(column)} AS {into.c[column].type.compile(_DIALECT)})")
        else:
            arrays.append(f"CAST(:{column} AS {into.c[column].type.compile(_DIALECT)}[])")
            selected.append(_quote(column))
    unknown = [column for column in key if column not in into.c]
    if unknown:
        raise KeyError(f"{into.name} has no column {unknown[0]!r}")
    names = ", ".join(_quote(c) for c in columns)
    # Every name is one of the table's own columns (looked up above, KeyError otherwise),
    # quoted; the values travel as bound parameters.
    sql = (
        f"INSERT INTO {_quote(into.name)} ({names}) SELECT {', '.join(selected)}"  # noqa: S608
        f" FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS v({names}, row_number)"
        # In the rows' order, so that two writers lock the same rows in the same order
        # (the callers sort their rows by key) and never wait for each other in a cycle.
        " ORDER BY row_number"
        f" ON CONFLICT ({', '.join(_quote(c) for c in key)})"
    )
    if on_conflict == "nothing":
        sql += " DO NOTHING"
    elif on_conflict == "update":
        updates = [f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in columns if c not in key]
        if "updated_at" in into.c and "updated_at" not in columns:
            updates.append("updated_at = now()")
        sql += f" DO UPDATE SET {', '.join(updates)}"
    else:
        raise ValueError(f"on_conflict must be 'update' or 'nothing', not {on_conflict!r}")
    return text(sql), json_columns


def _quote(name: str) -> str:
    return _DIALECT.identifier_preparer.quote(name)
