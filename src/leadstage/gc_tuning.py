"""Garbage-collector settings for the long-running service processes."""

from __future__ import annotations

import gc

#: Allocations between young-generation collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def tune_garbage_collector(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Keep the cycle collector from costing a large share of a hot process's CPU.

    Call it once start-up is done (modules imported, app built). A request or a
    consumer batch holds thousands of objects (parsed JSON, models, folds) for a
    while, so they survive young collections and are promoted; the full collections
    that promotion triggers then walk the whole heap, every imported module
    included. Start-up objects live as long as the process: freeze them out of
    every collection. And collect the young generation less often: almost all of
    this garbage is acyclic and freed by reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
