"""Event transports: Apache Kafka in production, a PostgreSQL event log embedded.

Services depend only on :mod:`leadstage.transport.base`; :func:`create_publisher`
and :func:`create_source` pick the implementation from the settings.
"""

from __future__ import annotations

from leadstage.db.session import SessionFactory
from leadstage.settings import ServiceSettings
from leadstage.transport.base import Publisher, RecordSource


def create_publisher(settings: ServiceSettings, sessions: SessionFactory) -> Publisher:
    """A publisher; its acknowledgement wait is bounded by ``produce_timeout_seconds``."""
    timeout: float = getattr(settings, "produce_timeout_seconds", 5.0)
    if settings.transport == "kafka":
        from leadstage.transport.kafka import KafkaPublisher

        return KafkaPublisher(settings.kafka_bootstrap_servers, timeout_seconds=timeout)
    from leadstage.db.session import create_engine, create_session_factory
    from leadstage.transport.pglog import PostgresLogPublisher

    # Its own connection pool: a caller may hold a transaction on the shared pool
    # while it waits for the append (ingest does), and must not starve it.
    log_engine = create_engine(settings, application_name="leadstage-event-log")
    return PostgresLogPublisher(
        create_session_factory(log_engine),
        partitions=settings.topic_partitions,
        timeout_seconds=timeout,
        on_stop=log_engine.dispose,
    )


def create_source(
    settings: ServiceSettings, sessions: SessionFactory, *, topic: str, group: str
) -> RecordSource:
    if settings.transport == "kafka":
        from leadstage.transport.kafka import KafkaRecordSource

        return KafkaRecordSource(settings.kafka_bootstrap_servers, topic=topic, group=group)
    from leadstage.transport.pglog import PostgresLogSource

    return PostgresLogSource(sessions, topic=topic, partitions=settings.topic_partitions)


async def create_topics(settings: ServiceSettings, sessions: SessionFactory) -> list[str]:
    """Create every topic LeadStage uses, idempotently. Returns their names."""
    topics = [
        settings.touchpoints_topic,
        settings.dead_letter_topic,
        settings.raw_touchpoints_topic,
        settings.lead_stage_changed_topic,
        settings.account_stage_changed_topic,
    ]
    if settings.transport == "kafka":
        from leadstage.transport.kafka import ensure_topics

        await ensure_topics(
            settings.kafka_bootstrap_servers,
            topics,
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
        )
    else:
        from leadstage.transport.pglog import ensure_log_partitions

        await ensure_log_partitions(sessions, topics, settings.topic_partitions)
    return topics
