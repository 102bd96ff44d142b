"""How fast the pool's jsonb values decode: the standard library against compact_json.

The engine reads a stored payload per history row and a state per lead and funnel,
a few hundred thousand jsonb values per 50,000 events (cProfile of the batch step).
Both decoders run here on the same documents in the same process, alternated, with
bare ``orjson.loads`` (which drops digits of integers beyond 64 bits) as the floor.

    .venv/bin/python bench/json_decode.py
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson

from leadstage import compact_json

#: A stored touchpoint payload and a lead state as the engine writes them.
PAYLOAD = json.dumps(
    {
        "event_id": "3f6c2a8e-5b7d-4c1e-9a2f-0d8b7e6c5a41",
        "type": "page_viewed",
        "occurred_at": "2026-05-14T09:31:07.120000Z",
        "received_at": "2026-05-14T09:31:09.004000Z",
        "source": "website",
        "lead_id": "lead-004217",
        "anonymous_id": "anon-8f2e1c",
        "channel": "organic_search",
        "utm": {"source": "google", "medium": "organic", "campaign": "q2-pricing"},
        "properties": {"url": "https://example.com/pricing", "title": "Pricing", "seconds": 48},
        "account": {"id": "acct-00421", "industry": "software", "employees": 250},
    }
)
STATE = json.dumps(
    {
        "scores": {"fit": 35.0, "engagement": 42.513274},
        "scores_as_of": "2026-05-14T09:31:07.120000+00:00",
        "fired_once": ["attributes:fit:industry", "demo-requested"],
    }
)


def rate(decode: Callable[[str], Any], documents: list[str], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for document in documents:
            decode(document)
    return rounds * len(documents) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    documents = [PAYLOAD, STATE]
    if any(compact_json.loads(d) != json.loads(d) for d in documents):
        raise SystemExit("the two decoders disagree")
    for repeat in range(1, args.repeats + 1):
        standard = rate(json.loads, documents, args.rounds)
        compact = rate(compact_json.loads, documents, args.rounds)
        bare = rate(orjson.loads, documents, args.rounds)
        print(
            f"run {repeat}: json.loads {1e6 / standard:.2f} us, "
            f"compact_json.loads {1e6 / compact:.2f} us (ratio {compact / standard:.2f}), "
            f"bare orjson.loads {1e6 / bare:.2f} us (inexact beyond 64 bits)"
        )


if __name__ == "__main__":
    main()
