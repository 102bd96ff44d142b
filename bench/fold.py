"""The stage engine's Python floor: parsing and folding events with no I/O at all.

Issue #4 asks for 15,000 events/s per engine process. A CPython process runs its
Python on one core, so whatever the database and the broker cost, the engine cannot
go faster than the Python it must run per event. This measures the two parts that
no storage design removes, on bench/engine.py's generated journeys:

1. **parse**: a Kafka record's bytes to the touchpoint the engine stores and the view
   the funnels see (``parse_records``, the stored payload, ``FoldedEvent``);
2. **fold**: each lead's events, in event-time order, through both default funnels
   (b2b-six-stage and aida) with their counted-window history (``fold_all``), as a
   batch of new events is folded.

Left out, so the figures are a floor: the database, late events' refolds, the
account fold, the outbox's JSON, the relays. The baseline, in the same run: reading
the same records with ``json.loads`` alone.

    .venv/bin/python bench/fold.py [--events 200000] [--leads 20000] [--accounts 2000]

No services needed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

import engine as dataset  # bench/engine.py: the generated journeys and accounts

from leadstage.funnels import load_presets
from leadstage.gc_tuning import tune_garbage_collector
from leadstage.transport.base import Record
from leadstage_engine.processing import FoldedEvent, LeadTimeline, fold_all, parse_records

FUNNELS = ("b2b-six-stage", "aida")

T = TypeVar("T")


def timed(work: Callable[[], T]) -> tuple[T, float]:
    started = time.process_time()
    result = work()
    return result, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data = dataset.generate(args.events, args.leads, args.accounts, late=0.0)
    records = [
        Record(topic="bench", partition=0, offset=n, key=r.key, value=r.value)
        for n, r in enumerate(dataset.records(data, random.Random(11)))
    ]
    presets = load_presets()
    funnels = [presets[name] for name in FUNNELS]
    tune_garbage_collector()  # as the engine process does

    def read() -> int:
        return sum(len(json.loads(record.value)) for record in records)

    def parse() -> dict[str, list[FoldedEvent]]:
        parsed, rejected = parse_records(records)
        assert not rejected  # noqa: S101 - generated data is valid
        by_lead: dict[str, list[FoldedEvent]] = defaultdict(list)
        for _, touchpoint in parsed:
            payload = touchpoint.model_dump(mode="json", exclude_none=True)  # as stored
            by_lead[touchpoint.lead_key].append(
                FoldedEvent.from_payload(
                    touchpoint.source,
                    touchpoint.event_id,
                    str(touchpoint.type),
                    touchpoint.occurred_at,
                    payload,
                )
            )
        return by_lead

    def fold(by_lead: dict[str, list[FoldedEvent]]) -> int:
        changes = 0
        for lead, events in by_lead.items():
            timeline = LeadTimeline(events)
            for funnel in funnels:
                changes += len(fold_all(funnel, lead, timeline).transitions)
        return changes

    count = len(records)
    print(
        f"{count:,} events over {args.leads:,} leads, funnels {', '.join(FUNNELS)}; "
        "process CPU per event"
    )
    print(
        f"{'round':>5} {'json.loads':>11} {'parse':>9} {'fold':>9} {'parse+fold':>11} {'ratio':>6}"
    )
    totals: list[float] = []
    for round_number in range(1, args.rounds + 1):
        _, read_seconds = timed(read)
        by_lead, parse_seconds = timed(parse)
        transitions, fold_seconds = timed(lambda: fold(by_lead))  # noqa: B023 - called at once
        per_event = (parse_seconds + fold_seconds) / count * 1e6
        totals.append(per_event)
        print(
            f"{round_number:>5} {read_seconds / count * 1e6:>9.1f}us "
            f"{parse_seconds / count * 1e6:>7.1f}us {fold_seconds / count * 1e6:>7.1f}us "
            f"{per_event:>9.1f}us {(parse_seconds + fold_seconds) / read_seconds:>6.1f}"
        )
    best = min(totals)
    print(f"transitions folded per round: {transitions:,}")
    print(
        f"best parse+fold: {best:.1f} us per event, so at most {1e6 / best:,.0f} events/s "
        "on one core with no I/O at all (ratio: parse+fold / json.loads)"
    )


if __name__ == "__main__":
    main()
