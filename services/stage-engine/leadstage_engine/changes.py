"""Ids of published changes."""

from __future__ import annotations

import hashlib


def change_id(*parts: object) -> str:
    """A deterministic id: the same change computed twice (a redelivery, a replay after
    a crash) has the same id, so consumers can drop repeats."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]
