"""Webhooks: every change POSTed, HMAC-signed, to subscribed endpoints; a dead endpoint
is retried, then dead-lettered, and never holds up the others."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx
from sqlalchemy import select

from leadstage.db.models import WebhookDeadLetter
from leadstage.db.session import SessionFactory
from tests.conftest import Receiver, leadstage_cli
from tests.e2e.conftest import Stack, free_port, last_line
from tests.e2e.test_walking_skeleton import wait_for_stage


async def test_changes_are_delivered_signed_and_a_dead_endpoint_is_dead_lettered(
    stack: Stack, receiver: Receiver, sessions: SessionFactory
) -> None:
    secret = secrets.token_hex(16)
    good = last_line(
        leadstage_cli(
            "webhooks",
            "add",
            "--url",
            receiver.url,
            "--secret",
            secret,
            "--event",
            "LeadStageChanged",
            "--funnel",
            "b2b-six-stage",
            env=stack.env,
        )
    )
    dead = last_line(
        leadstage_cli(
            "webhooks",
            "add",
            "--url",
            f"http://127.0.0.1:{free_port()}/gone",
            "--secret",
            "s",
            "--funnel",
            "b2b-six-stage",
            env=stack.env,
        )
    )
    accounts_hook = last_line(
        leadstage_cli(
            "webhooks",
            "add",
            "--url",
            receiver.url,
            "--secret",
            secret,
            "--event",
            "AccountStageChanged",
            env=stack.env,
        )
    )
    good_id, dead_id = good.split()[1], dead.split()[1]
    try:
        await asyncio.sleep(6)  # the engine re-reads subscriptions every 5 s
        lead = f"hooked-{secrets.token_hex(4)}"
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"{stack.ingest.url}/v1/events",
                headers=stack.write_headers,
                json={
                    "type": "demo_requested",
                    "lead_id": lead,
                    "occurred_at": "2026-11-20T10:00:00Z",
                    "account": {"id": f"acct-{lead}"},
                },
            )
            assert response.status_code == 202
            await wait_for_stage(http, stack, lead, "Action")

        deadline = time.monotonic() + 30
        mine: list[tuple[dict[str, str], bytes]] = []
        while not mine and time.monotonic() < deadline:
            mine = [(h, b) for h, b in receiver.received if json.loads(b)["lead_id"] == lead]
            await asyncio.sleep(0.2)
        assert mine, "the change was not delivered"
        headers, body = mine[0]
        change = json.loads(body)
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-leadstage-signature"], expected)
        assert headers["x-leadstage-change-id"] == change["change_id"]
        assert (change["event"], change["to_stage"]) == ("LeadStageChanged", "Action")

        # Account changes reach the subscriptions that ask for them, signed the same way
        # (the lead's account, below the quorum stage, follows its furthest contact).
        account_changes: list[dict[str, Any]] = []
        while not account_changes and time.monotonic() < deadline:
            account_changes = [
                json.loads(b)
                for h, b in receiver.received
                if json.loads(b).get("account_id") == f"acct-{lead}"
                and hmac.compare_digest(
                    h["x-leadstage-signature"],
                    "sha256=" + hmac.new(secret.encode(), b, hashlib.sha256).hexdigest(),
                )
            ]
            await asyncio.sleep(0.2)
        assert account_changes, "the account change was not delivered"
        assert {(c["event"], c["funnel"], c["to_stage"]) for c in account_changes} >= {
            ("AccountStageChanged", "b2b-six-stage", "Action")
        }

        letters: list[WebhookDeadLetter] = []
        while not letters and time.monotonic() < deadline:
            async with sessions() as session:
                letters = list(
                    (
                        await session.scalars(
                            select(WebhookDeadLetter).where(
                                WebhookDeadLetter.subscription_id == int(dead_id),
                                WebhookDeadLetter.change_id == change["change_id"],
                            )
                        )
                    ).all()
                )
            await asyncio.sleep(0.2)
        assert letters, "the dead endpoint's change was not dead-lettered"
        assert letters[0].attempts == 5
        assert "ConnectError" in letters[0].last_error
    finally:
        for subscription in (good_id, dead_id, accounts_hook.split()[1]):
            leadstage_cli("webhooks", "remove", subscription, env=stack.env)
