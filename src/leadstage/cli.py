"""``leadstage``: one command, every role.

leadstage ingest | engine | api      run one service process
leadstage migrate                    alembic upgrade head
leadstage topics                     create the topics (idempotent)
leadstage keys create|list|revoke    write keys for sources
leadstage tokens create|list|revoke  API tokens for the metrics API
leadstage replay --funnel NAME       recompute a funnel's states with a version, switch over
leadstage rollup [--all]             bring the funnel summary's aggregates up to date
leadstage services up|down|status    local PostgreSQL and Kafka (development)
leadstage run                        everything, embedded (what `make run` does)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from leadstage.settings import ApiSettings, EngineSettings, IngestSettings, ServiceSettings


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _serve(role: str) -> int:
    import uvicorn

    from leadstage.logs import configure_logging

    settings: ServiceSettings
    if role == "ingest":
        from leadstage_ingest.app import create_app as create_ingest

        settings = ingest = IngestSettings()
        configure_logging(settings.log_level, settings.log_format, service=role)
        app = create_ingest(ingest)
    elif role == "engine":
        from leadstage_engine.app import create_app as create_engine_app
        from leadstage_engine.reload import register_at_start

        settings = engine = EngineSettings()
        configure_logging(settings.log_level, settings.log_format, service=role)
        # Refuses (exit 2) a file changed without a version bump, before serving.
        asyncio.run(register_at_start(engine))
        app = create_engine_app(engine)
    else:
        settings = api = ApiSettings()
        configure_logging(settings.log_level, settings.log_format, service=role)
        if api.http_workers > 1:
            # Worker processes build their own app (settings from the same environment).
            uvicorn.run(
                "leadstage_api.app:create_app_from_environment",
                factory=True,
                workers=api.http_workers,
                host=api.http_host,
                port=api.http_port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=30,
            )
            return 0
        from leadstage_api.app import create_app as create_api

        app = create_api(api)
    port: int = getattr(settings, "http_port")  # noqa: B009 - every service class has one
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    )
    # A failed background task shuts the server down through this (see supervision.py).
    app.state.server = server
    server.run()
    if not server.started:
        return 3  # as uvicorn.run answers a failed start (the lifespan, a port in use)
    # A process whose work failed exits non-zero, so supervisors restart it.
    return 1 if getattr(app.state, "failed", False) else 0


def _with_database(
    action: Callable[[Any], Coroutine[Any, Any, int]],
) -> int:
    from leadstage.db.session import create_engine, create_session_factory

    async def main() -> int:
        settings = ServiceSettings()
        database = create_engine(settings, application_name="leadstage-cli")
        try:
            return await action(create_session_factory(database))
        finally:
            await database.dispose()

    return asyncio.run(main())


def _migrate(_: argparse.Namespace) -> int:
    from leadstage.migrate import upgrade

    upgrade(ServiceSettings())
    _print("database is at the latest migration")
    return 0


def _topics(_: argparse.Namespace) -> int:
    from leadstage.transport import create_topics

    async def action(sessions: Any) -> int:
        names = await create_topics(ServiceSettings(), sessions)
        _print("topics ready: " + ", ".join(names))
        return 0

    return _with_database(action)


def _keys(args: argparse.Namespace) -> int:
    from leadstage import credentials
    from leadstage.db.session import unit_of_work

    async def action(sessions: Any) -> int:
        async with unit_of_work(sessions) as session:
            if args.keys_command == "create":
                issued = await credentials.create_write_key(
                    session,
                    args.source,
                    allowed_origins=args.allowed_origin,
                    rate_limit_per_second=args.rate_limit,
                )
                _print(f"write key {issued.id} for source {args.source!r} (shown once):")
                _print(issued.secret)
            elif args.keys_command == "revoke":
                if not await credentials.revoke_write_key(session, args.id):
                    _print(f"no active write key {args.id}")
                    return 1
                _print(f"write key {args.id} revoked")
            else:
                for key in await credentials.list_write_keys(session):
                    state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                    _print(f"{key.id}\t{key.source}\t{state}\tcreated {key.created_at:%Y-%m-%d}")
        return 0

    return _with_database(action)


def _tokens(args: argparse.Namespace) -> int:
    from leadstage import credentials
    from leadstage.db.session import unit_of_work

    async def action(sessions: Any) -> int:
        async with unit_of_work(sessions) as session:
            if args.tokens_command == "create":
                issued = await credentials.create_api_token(session, args.name, args.scopes)
                _print(f"API token {issued.id} {args.name!r} scopes={args.scopes} (shown once):")
                _print(issued.secret)
            elif args.tokens_command == "revoke":
                if not await credentials.revoke_api_token(session, args.id):
                    _print(f"no active API token {args.id}")
                    return 1
                _print(f"API token {args.id} revoked")
            else:
                for token in await credentials.list_api_tokens(session):
                    state = "revoked" if token.revoked_at else "active"
                    _print(f"{token.id}\t{token.name}\t{','.join(token.scopes)}\t{state}")
        return 0

    return _with_database(action)


def _dlq(args: argparse.Namespace) -> int:
    import json

    from leadstage import dlq

    async def action(sessions: Any) -> int:
        settings = ServiceSettings()
        if args.dlq_command == "replay":
            count = await dlq.replay(settings, sessions, kind=args.kind)
            _print(f"replayed {count} dead letters to {settings.raw_touchpoints_topic}")
            return 0
        shown = 0
        async for record in dlq.dead_letters(settings, sessions):
            entry = dlq.describe(record)
            if args.kind and entry.get("error_kind") != args.kind:
                continue
            _print(json.dumps(entry, ensure_ascii=False))
            shown += 1
            if shown >= args.limit:
                break
        return 0

    return _with_database(action)


def _webhooks(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select, update

    from leadstage.db.models import WebhookSubscription
    from leadstage.db.session import unit_of_work

    async def action(sessions: Any) -> int:
        async with unit_of_work(sessions) as session:
            if args.webhooks_command == "add":
                subscription = WebhookSubscription(
                    url=args.url, secret=args.secret, events=args.event, funnels=args.funnel
                )
                session.add(subscription)
                await session.flush()
                _print(f"webhook {subscription.id} -> {args.url}")
            elif args.webhooks_command == "remove":
                result = await session.execute(
                    update(WebhookSubscription)
                    .where(WebhookSubscription.id == args.id)
                    .values(disabled_at=func.now())
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    _print(f"no webhook {args.id}")
                    return 1
                _print(f"webhook {args.id} removed")
            else:
                for row in await session.scalars(
                    select(WebhookSubscription).order_by(WebhookSubscription.id)
                ):
                    state = "removed" if row.disabled_at else "active"
                    _print(f"{row.id}\t{row.url}\t{','.join(row.events) or '*'}\t{state}")
        return 0

    return _with_database(action)


def _replay(args: argparse.Namespace) -> int:
    from leadstage.db.session import create_engine
    from leadstage.logs import configure_logging
    from leadstage.progress import ProgressBar
    from leadstage_engine.replay import ReplayRefusedError, ReplayRunningError, replay_funnel

    settings = ServiceSettings()
    configure_logging("WARNING", settings.log_format, service="replay")
    bar = ProgressBar(sys.stderr)

    async def main() -> Any:
        database = create_engine(settings, application_name="leadstage-replay")
        try:
            return await replay_funnel(
                database,
                settings,
                args.funnel,
                args.version,
                batch_leads=args.batch_leads,
                on_progress=bar.update,
            )
        finally:
            await database.dispose()

    try:
        report = asyncio.run(main())
    except ReplayRefusedError as error:
        sys.stderr.write(f"leadstage replay: {error}\n")
        return 2
    except ReplayRunningError as error:
        sys.stderr.write(f"leadstage replay: {error}\n")
        return 1
    finally:
        bar.close()
    previous = report.previous_version
    _print(
        f"funnel {report.funnel} version {report.version} is active "
        f"(was {previous if previous is not None else 'none'}): {report.leads} leads replayed, "
        f"{report.caught_up} caught up after live changes, {report.active_leads} leads now; "
        f"{report.seconds:.1f}s, switch-over {report.switch_seconds:.2f}s"
    )
    if report.skipped_rules:
        _print(f"{report.skipped_rules} rule evaluations skipped on malformed properties")
    return 0


def _rollup(args: argparse.Namespace) -> int:
    import time

    from leadstage.rollup import drain

    async def action(sessions: Any) -> int:
        started = time.perf_counter()
        outcome = await drain(sessions, limit=args.batch_leads, rebuild=args.all)
        rebuilt = ", ".join(outcome.rebuilt) or "none"
        _print(
            f"rolled up {outcome.taken} changed leads ({outcome.changed} funnel facts changed); "
            f"rebuilt: {rebuilt}; {time.perf_counter() - started:.1f}s"
        )
        return 0

    return _with_database(action)


def _services(args: argparse.Namespace) -> int:
    from leadstage.local import services

    if args.services_command == "up":
        services.up(kafka=not args.no_kafka)
        return 0
    if args.services_command == "down":
        services.down()
        return 0
    return services.status()


def _run(args: argparse.Namespace) -> int:
    from leadstage.local.run import run_all

    return run_all(
        transport=args.transport,
        ingest_port=args.ingest_port,
        api_port=args.api_port,
        engine_port=args.engine_port,
        database=args.database,
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from leadstage.credentials import ALL_SCOPES

    parser = argparse.ArgumentParser(
        prog="leadstage", description="LeadStage: the B2B funnel, event by event."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for role, help_text in (
        ("ingest", "run the ingest HTTP service"),
        ("engine", "run the stage engine consumer"),
        ("api", "run the metrics API"),
    ):
        commands.add_parser(role, help=help_text).set_defaults(
            handler=lambda _, role=role: _serve(role)
        )
    commands.add_parser("migrate", help="apply database migrations").set_defaults(handler=_migrate)
    commands.add_parser("topics", help="create the event topics").set_defaults(handler=_topics)

    keys = commands.add_parser("keys", help="manage write keys")
    keys.set_defaults(handler=_keys)
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create_key = key_commands.add_parser("create")
    create_key.add_argument("--source", required=True, help="e.g. website, ads, crm")
    create_key.add_argument(
        "--allowed-origin", action="append", default=[], help="browser origin allowed (CORS)"
    )
    create_key.add_argument("--rate-limit", type=int, help="events per second (default: service)")
    key_commands.add_parser("list")
    key_commands.add_parser("revoke").add_argument("id", type=int)

    tokens = commands.add_parser("tokens", help="manage API tokens")
    tokens.set_defaults(handler=_tokens)
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    create = token_commands.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", nargs="+", choices=ALL_SCOPES, default=list(ALL_SCOPES))
    token_commands.add_parser("list")
    token_commands.add_parser("revoke").add_argument("id", type=int)

    dead = commands.add_parser("dlq", help="inspect or replay dead letters")
    dead.set_defaults(handler=_dlq)
    dead_commands = dead.add_subparsers(dest="dlq_command", required=True)
    inspect = dead_commands.add_parser("inspect", help="print dead letters as JSON lines")
    inspect.add_argument("--kind", help="only this error kind, e.g. schema_violation")
    inspect.add_argument("--limit", type=int, default=100)
    replay = dead_commands.add_parser("replay", help="send dead letters back through ingest")
    replay.add_argument("--kind", help="only this error kind")

    hooks = commands.add_parser("webhooks", help="HTTP endpoints that receive every change")
    hooks.set_defaults(handler=_webhooks)
    hook_commands = hooks.add_subparsers(dest="webhooks_command", required=True)
    add = hook_commands.add_parser("add")
    add.add_argument("--url", required=True)
    add.add_argument("--secret", required=True, help="HMAC-SHA256 signing secret")
    add.add_argument("--event", action="append", default=[], help="e.g. LeadStageChanged")
    add.add_argument("--funnel", action="append", default=[])
    hook_commands.add_parser("list")
    hook_commands.add_parser("remove").add_argument("id", type=int)

    versions = commands.add_parser(
        "replay",
        help="recompute a funnel's lead states with one version, then switch over",
        description="Recompute every lead's state in FUNNEL with VERSION (default: the version "
        "its file defines) from the stored touchpoints, while the engine keeps processing with "
        "the active version; then catch up and make VERSION the active one. Exit 2: unknown "
        "funnel or version; 1: a replay of the funnel is already running.",
    )
    versions.add_argument("--funnel", required=True, help="e.g. b2b-six-stage")
    versions.add_argument("--version", type=int, help="a registered version (default: the file's)")
    versions.add_argument(
        "--batch-leads", type=_positive, default=500, help="leads per transaction (default 500)"
    )
    versions.set_defaults(handler=_replay)

    rollup = commands.add_parser(
        "rollup",
        help="bring the funnel summary's aggregates up to date",
        description="Roll up every lead marked as changed, until none is left (the engine "
        "also does this every LEADSTAGE_ROLLUP_INTERVAL_SECONDS). A funnel with no aggregates "
        "yet, or computed with another version, is rebuilt from its stored transitions.",
    )
    rollup.add_argument(
        "--all", action="store_true", help="rebuild every funnel from scratch (a backfill)"
    )
    rollup.add_argument(
        "--batch-leads", type=_positive, default=5000, help="leads per round (default 5000)"
    )
    rollup.set_defaults(handler=_rollup)

    services = commands.add_parser("services", help="local PostgreSQL and Kafka")
    services.set_defaults(handler=_services)
    service_commands = services.add_subparsers(dest="services_command", required=True)
    service_commands.add_parser("up").add_argument(
        "--no-kafka", action="store_true", help="PostgreSQL only"
    )
    service_commands.add_parser("down")
    service_commands.add_parser("status")

    run = commands.add_parser("run", help="run all services locally (embedded by default)")
    run.add_argument("--transport", choices=("postgres", "kafka"), default="postgres")
    run.add_argument("--ingest-port", type=int, default=8081)
    run.add_argument("--api-port", type=int, default=8080)
    run.add_argument("--engine-port", type=int, default=8082)
    run.add_argument("--database", default="leadstage", help="database on the local server")
    run.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from leadstage.funnels import FunnelDefinitionError

    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (FunnelDefinitionError, ValidationError) as error:
        # Configuration a person must fix: say what and where, without a traceback.
        sys.stderr.write(f"leadstage: refusing to start: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
