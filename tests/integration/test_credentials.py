from __future__ import annotations

from sqlalchemy import select

from leadstage import credentials
from leadstage.db.models import ApiToken, WriteKey
from leadstage.db.session import SessionFactory, unit_of_work


async def test_write_keys_are_stored_hashed_and_stop_working_when_revoked(
    sessions: SessionFactory,
) -> None:
    async with unit_of_work(sessions) as session:
        issued = await credentials.create_write_key(session, "website")
    async with unit_of_work(sessions) as session:
        found = await credentials.find_write_key(session, issued.secret)
        stored = await session.scalar(select(WriteKey.key_hash).where(WriteKey.id == issued.id))
    assert found is not None
    assert found.name == "website"
    assert stored == credentials.hash_secret(issued.secret)
    assert issued.secret not in str(stored)

    async with unit_of_work(sessions) as session:
        assert await credentials.revoke_write_key(session, issued.id)
        assert not await credentials.revoke_write_key(session, issued.id)  # already revoked
    async with unit_of_work(sessions) as session:
        assert await credentials.find_write_key(session, issued.secret) is None
        assert await credentials.find_write_key(session, issued.secret + "x") is None


async def test_api_tokens_carry_their_scopes(sessions: SessionFactory) -> None:
    async with unit_of_work(sessions) as session:
        issued = await credentials.create_api_token(session, "crm", [credentials.SCOPE_READ_LEADS])
    async with unit_of_work(sessions) as session:
        caller = await credentials.find_api_token(session, issued.secret)
        scopes = await session.scalar(select(ApiToken.scopes).where(ApiToken.id == issued.id))
    assert caller is not None
    assert caller.scopes == {credentials.SCOPE_READ_LEADS}
    assert scopes == [credentials.SCOPE_READ_LEADS]


async def test_cached_token_lookups_see_a_revocation_once_their_entry_expires(
    sessions: SessionFactory,
) -> None:
    now = [1000.0]
    tokens = credentials.CachedLookup(
        sessions, credentials.find_api_token, ttl_seconds=5, max_entries=2, clock=lambda: now[0]
    )
    async with unit_of_work(sessions) as session:
        issued = await credentials.create_api_token(session, "crm", [credentials.SCOPE_READ_LEADS])
    first = await tokens(issued.secret)
    assert first is not None
    assert first.name == "crm"
    async with unit_of_work(sessions) as session:
        assert await credentials.revoke_api_token(session, first.token_id)

    now[0] += 4.9  # still inside the entry's 5 s: the process has not re-read the token
    assert await tokens(issued.secret) == first
    now[0] += 0.2  # expired: the revocation is seen
    assert await tokens(issued.secret) is None
    assert await tokens(issued.secret + "x") is None  # unknown secrets are not errors

    # Past max_entries the cache starts over rather than growing.
    for attempt in range(5):
        assert await tokens(f"lst_bogus_{attempt}") is None
    assert len(tokens._entries) <= 2


async def test_a_zero_ttl_checks_every_time(sessions: SessionFactory) -> None:
    tokens = credentials.CachedLookup(sessions, credentials.find_api_token, ttl_seconds=0)
    async with unit_of_work(sessions) as session:
        issued = await credentials.create_api_token(session, "crm", [credentials.SCOPE_READ_LEADS])
    found = await tokens(issued.secret)
    assert found is not None
    async with unit_of_work(sessions) as session:
        await credentials.revoke_api_token(session, found.token_id)
    assert await tokens(issued.secret) is None
