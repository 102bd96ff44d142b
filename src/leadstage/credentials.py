"""Write keys (ingest) and API tokens (metrics API): created, looked up, revoked.

Secrets are random 32-byte tokens shown once at creation; only their SHA-256
is stored. A fast hash is enough for secrets with 256 bits of entropy (no
dictionary to attack), and it keeps the lookup on the request path cheap.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from leadstage.db.models import ApiToken, WriteKey
from leadstage.db.session import SessionFactory

WRITE_KEY_PREFIX = "lsw_"
API_TOKEN_PREFIX = "lst_"  # noqa: S105 - a prefix, not a secret

SCOPE_READ_LEADS = "leads:read"
SCOPE_READ_METRICS = "metrics:read"
SCOPE_WRITE_INPUTS = "inputs:write"
ALL_SCOPES = (SCOPE_READ_LEADS, SCOPE_READ_METRICS, SCOPE_WRITE_INPUTS)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Issued:
    id: int
    secret: str


@dataclass(frozen=True)
class Source:
    """The sender a valid write key identifies."""

    key_id: int
    name: str
    rate_limit_per_second: int | None = None
    allowed_origins: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Caller:
    """The holder of a valid API token."""

    token_id: int
    name: str
    scopes: frozenset[str]


async def create_write_key(
    session: AsyncSession,
    source: str,
    *,
    allowed_origins: Sequence[str] = (),
    rate_limit_per_second: int | None = None,
) -> Issued:
    secret = new_secret(WRITE_KEY_PREFIX)
    key = WriteKey(
        source=source,
        key_hash=hash_secret(secret),
        allowed_origins=list(allowed_origins),
        rate_limit_per_second=rate_limit_per_second,
    )
    session.add(key)
    await session.flush()
    return Issued(key.id, secret)


async def find_write_key(session: AsyncSession, secret: str) -> Source | None:
    row = await session.execute(
        select(
            WriteKey.id, WriteKey.source, WriteKey.rate_limit_per_second, WriteKey.allowed_origins
        ).where(WriteKey.key_hash == hash_secret(secret), WriteKey.revoked_at.is_(None))
    )
    found = row.one_or_none()
    if found is None:
        return None
    return Source(
        found.id, found.source, found.rate_limit_per_second, frozenset(found.allowed_origins)
    )


async def find_source(session: AsyncSession, name: str) -> Source | None:
    """An active write key's source by name (for trusted producers on the raw topic)."""
    row = await session.execute(
        select(WriteKey.id, WriteKey.source, WriteKey.rate_limit_per_second)
        .where(WriteKey.source == name, WriteKey.revoked_at.is_(None))
        .order_by(WriteKey.id)
        .limit(1)
    )
    found = row.one_or_none()
    return Source(found.id, found.source, found.rate_limit_per_second) if found else None


async def allowed_origins(session: AsyncSession) -> frozenset[str]:
    """Every origin any active write key allows (answers CORS preflights, which carry
    no key)."""
    rows = await session.scalars(
        select(func.unnest(WriteKey.allowed_origins)).where(WriteKey.revoked_at.is_(None))
    )
    return frozenset(rows.all())


async def create_api_token(session: AsyncSession, name: str, scopes: list[str]) -> Issued:
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {', '.join(ALL_SCOPES)}")
    secret = new_secret(API_TOKEN_PREFIX)
    token = ApiToken(name=name, token_hash=hash_secret(secret), scopes=sorted(set(scopes)))
    session.add(token)
    await session.flush()
    return Issued(token.id, secret)


async def find_api_token(session: AsyncSession, secret: str) -> Caller | None:
    row = await session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.scopes).where(
            ApiToken.token_hash == hash_secret(secret), ApiToken.revoked_at.is_(None)
        )
    )
    found = row.one_or_none()
    return Caller(found.id, found.name, frozenset(found.scopes)) if found else None


async def revoke_write_key(session: AsyncSession, key_id: int) -> bool:
    result = await session.execute(
        update(WriteKey)
        .where(WriteKey.id == key_id, WriteKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_api_token(session: AsyncSession, token_id: int) -> bool:
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_write_keys(session: AsyncSession) -> list[WriteKey]:
    return list((await session.scalars(select(WriteKey).order_by(WriteKey.id))).all())


async def list_api_tokens(session: AsyncSession) -> list[ApiToken]:
    return list((await session.scalars(select(ApiToken).order_by(ApiToken.id))).all())


Found = TypeVar("Found")


class CachedLookup(Generic[Found]):
    """A credential lookup (``find_write_key``, ``find_api_token``) remembered for
    ``ttl_seconds``, so that a request is not a database trip before its real work.

    The price is that a revoked secret keeps working for up to ``ttl_seconds`` in a
    process that saw it recently; 0 turns the cache off. Unknown secrets are cached too
    (a client retrying a bad key costs nothing), and the cache is cleared when it grows
    past ``max_entries``, so a flood of random secrets cannot grow it without bound.
    Entries are keyed by the secret's hash: the secrets themselves are not kept.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        find: Callable[[AsyncSession, str], Awaitable[Found | None]],
        ttl_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._find = find
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Found | None]] = {}

    async def __call__(self, secret: str) -> Found | None:
        now = self._clock()
        key = hash_secret(secret)
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._sessions() as session:
            found = await self._find(session, secret)
        if self._ttl > 0:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = (now + self._ttl, found)
        return found
