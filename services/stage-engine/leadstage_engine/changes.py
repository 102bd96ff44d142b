"""Published changes: their ids, and the outbox rows that carry them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from leadstage import compact_json


def change_id(*parts: object) -> str:
    """A deterministic id: the same change computed twice (a redelivery, a replay after
    a crash) has the same id, so consumers can drop repeats."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def outbox_row(topic: str, key: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The outbox row that publishes ``payload`` to ``topic`` with Kafka key ``key``.

    The body is compact UTF-8 JSON (``compact_json``: a batch encodes about a thousand
    changes, several times faster than with the standard library's encoder alone)."""
    return {
        "topic": topic,
        "key": key.encode(),
        "change_id": payload["change_id"],
        "payload": compact_json.dumps(payload),
    }
