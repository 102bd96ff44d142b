"""Prometheus metrics of the ingest process (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "leadstage_ingest_events_total",
    "Events received, by source, intake (http, kafka) and outcome (accepted, duplicate, rejected).",
    ["source", "intake", "outcome"],
)
REJECTED = Counter(
    "leadstage_ingest_rejected_total",
    "Rejected events and requests, by error kind.",
    ["intake", "kind"],
)
DEAD_LETTERS = Counter(
    "leadstage_ingest_dead_letters_total",
    "Dead-letter writes, by result (written, dropped, failed).",
    ["result"],
)
PRODUCE_SECONDS = Histogram(
    "leadstage_ingest_produce_seconds",
    "Time from handing a batch to the event log to its durable acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GROUP_EVENTS = Histogram(
    "leadstage_ingest_group_events",
    "Events per group commit (one transaction and one produce batch).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
GROUP_SECONDS = Histogram(
    "leadstage_ingest_group_seconds",
    "Duration of one group commit: claim, resolve, produce, commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
IN_FLIGHT = Gauge("leadstage_ingest_in_flight", "Events waiting for the event log's ack.")
CONNECTIONS_LOST = Counter(
    "leadstage_ingest_connections_lost_total",
    "Group commits run again on a fresh connection after their database connection broke.",
)
