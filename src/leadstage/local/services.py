"""``leadstage services up|down|status``: the local PostgreSQL and Kafka.

Idempotent: ``up`` starts only what is not already answering and waits until
each service really answers; ``down`` stops only what ``up`` started.
"""

from __future__ import annotations

import os
import sys

from leadstage.local import cache_dir, local_dir
from leadstage.local.kafka import LocalKafka, wait_until_serving
from leadstage.local.postgres import LocalPostgres
from leadstage.settings import LOCAL_KAFKA_PORT, LOCAL_POSTGRES_PORT


def local_postgres() -> LocalPostgres:
    port = int(os.environ.get("LEADSTAGE_LOCAL_POSTGRES_PORT", LOCAL_POSTGRES_PORT))
    return LocalPostgres(root=local_dir() / "postgres", port=port)


def local_kafka() -> LocalKafka:
    port = int(os.environ.get("LEADSTAGE_LOCAL_KAFKA_PORT", LOCAL_KAFKA_PORT))
    return LocalKafka(root=local_dir() / "kafka", port=port, cache=cache_dir())


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def up(*, kafka: bool = True, database: str = "leadstage") -> None:
    postgres = local_postgres()
    started = postgres.start()
    postgres.create_database(database)
    _say(
        f"PostgreSQL {'started' if started else 'already running'} on "
        f"{postgres.host}:{postgres.port} (log: {postgres.log_file})"
    )
    if kafka:
        broker = local_kafka()
        started = broker.start()
        wait_until_serving(broker.bootstrap_servers)
        _say(
            f"Kafka {'started' if started else 'already running'} on "
            f"{broker.bootstrap_servers} (log: {broker.log_file})"
        )


def down() -> None:
    broker, postgres = local_kafka(), local_postgres()
    _say("Kafka stopped" if broker.stop() else "Kafka was not started from this checkout")
    _say("PostgreSQL stopped" if postgres.stop() else "PostgreSQL was not running")


def status() -> int:
    broker, postgres = local_kafka(), local_postgres()
    _say(f"PostgreSQL {postgres.host}:{postgres.port}: {'up' if postgres.is_running() else 'down'}")
    _say(f"Kafka {broker.bootstrap_servers}: {'up' if broker.is_running() else 'down'}")
    return 0 if postgres.is_running() and broker.is_running() else 1
