"""The `cqrs` command line: one entry point for every process and operation of the pipeline."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pydantic import ValidationError

from app.settings import get_settings
from connectors import ServiceUnavailable


def cmd_check(args: argparse.Namespace) -> int:
    """Reach every configured service once; one line each."""
    from connectors import elasticsearch, kafka, mongo, postgres, redis, registry

    settings = get_settings()
    failed = 0
    for module in (postgres, redis, mongo, elasticsearch, kafka, registry):
        try:
            info = module.check(settings)
            print(f"ok    {info.service:<15} {info.address}  {info.version}")
        except ServiceUnavailable as exc:
            failed += 1
            print(f"FAIL  {exc}")
    return 2 if failed else 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from app.operations.smoke import run_smoke

    run_smoke(get_settings())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.operations.demo import DemoFailed, run_demo

    try:
        run_demo(get_settings(), serve=args.serve)
    except DemoFailed as exc:
        print(f"cqrs demo: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.commands.migrate import migrate

    print(f"write model at revision {migrate(get_settings())}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from app.operations.setup import setup_all

    for what, result in setup_all(get_settings()).items():
        print(f"{what}: {result}")
    return 0


def verifiable_tokens() -> str | None:
    """Why the HTTP services could not verify bearer tokens, checked before the server starts."""
    from app.http.identity import TokenVerifier

    try:
        TokenVerifier(get_settings())
    except RuntimeError as exc:
        return str(exc)
    return None


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    if (reason := verifiable_tokens()) is not None:
        print(f"cqrs gateway: {reason}", file=sys.stderr)
        return 2

    uvicorn.run("app.commands.api:create_app", factory=True, host=args.host, port=args.port,
                log_level=args.log_level, access_log=False, loop="uvloop", http="httptools")
    return 0


def cmd_query_api(args: argparse.Namespace) -> int:
    import uvicorn

    if (reason := verifiable_tokens()) is not None:
        print(f"cqrs query-api: {reason}", file=sys.stderr)
        return 2

    uvicorn.run("app.queries.api:create_app", factory=True, host=args.host, port=args.port,
                log_level=args.log_level, access_log=False, loop="uvloop", http="httptools")
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    """Run the outbox relay as its own process (several may run; one leads)."""
    import asyncio
    import signal

    from prometheus_client import start_http_server

    from app.commands.relay import OutboxRelay

    settings = get_settings()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.host)
    relay = OutboxRelay(settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        await relay.run()

    asyncio.run(run())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one projection's Faust worker until stopped."""
    from faust import Worker

    from agents.outages import StoreHealth
    from agents.probes import serve_probes
    from agents.worker import create_worker_app
    from app.operations.setup import prepare_event_codecs

    settings = get_settings()
    health = StoreHealth(args.projection)
    if args.metrics_port:
        serve_probes(health, args.metrics_port, args.host)
    app = create_worker_app(args.projection, settings, lambda: prepare_event_codecs(settings), health)
    worker = Worker(app, loglevel=args.log_level.upper(), quiet=True)
    # Faust's startup spinner sets the root logger to DEBUG for good (at WARNING and above), so every debug
    # call of aiokafka, pymongo and Faust would build a log record only to drop it: no spinner, no DEBUG.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_lag(args: argparse.Namespace) -> int:
    from app.operations import lag

    return lag.main(args, get_settings())


def cmd_dlq(args: argparse.Namespace) -> int:
    from app.operations import dlq

    settings = get_settings()
    key = args.key.encode() if args.key is not None else None
    if args.action == "list":
        letters = dlq.newest_dead_letters(settings, limit=args.limit, projection=args.projection, key=key)
        if not letters:
            print(f"no dead letters on {dlq.DLQ_TOPIC}" + (f" for {args.projection}" if args.projection else ""))
            return 0
        print(dlq.format_table(letters))
        print(f"{len(letters)} dead letter(s)")
        return 0
    count = dlq.replay(settings, projection=args.projection, dry_run=args.dry_run, key=key)
    print(f"{'would replay' if args.dry_run else 'replayed'} {count} dead letter(s)")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from app.operations import rebuild

    return rebuild.main(args, get_settings())


def cmd_token(args: argparse.Namespace) -> int:
    from app.operations import tokens

    return tokens.main(args, get_settings())


def cmd_schemas(args: argparse.Namespace) -> int:
    from app.operations import schema_gate

    return schema_gate.main(args, get_settings())


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "check": (cmd_check, "check that every configured service answers"),
    "demo": (cmd_demo, "start gateway, query API and workers, and play the e-commerce story through them"),
    "smoke": (cmd_smoke, "write and read back through every service, printing each step"),
    "migrate": (cmd_migrate, "apply the write-model migrations"),
    "setup": (cmd_setup, "migrate, create the event topics and register their schemas"),
    "gateway": (cmd_gateway, "run the HTTP command gateway (with the outbox relay unless OUTBOX_RELAY_ENABLED=false)"),
    "relay": (cmd_relay, "run the outbox relay on its own"),
    "query-api": (cmd_query_api, "run the HTTP query API over the read models (falls back to the write model)"),
    "worker": (cmd_worker, "run the Faust worker of one projection"),
    "dlq": (cmd_dlq, "list dead letters, or replay them to their source topics"),
    "schemas": (cmd_schemas, "check the Avro schemas against the registry's compatibility levels, or register them"),
    "rebuild": (cmd_rebuild, "build a new version of a read model by replaying its topics, then switch reads to it"),
    "token": (cmd_token, "issue a signed bearer token for local use (roles customer, admin, operator)"),
    "lag": (cmd_lag, "show each projection's consumer lag: offsets and event-time staleness per partition"),
}

SERVER_DEFAULTS = {"gateway": 8000, "query-api": 8001}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cqrs", description="CQRS stream-processing pipeline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        if name == "demo":
            p.add_argument("--serve", action="store_true", help="keep the processes running after the story")
        if name == "dlq":
            p.add_argument("action", choices=["list", "replay"])
            p.add_argument("--projection", help="only dead letters of this projection")
            p.add_argument("--limit", type=int, default=1000, help="list the newest, at most this many")
            p.add_argument("--dry-run", action="store_true", help="replay: count, send nothing")
            p.add_argument("--key", help="only the dead letters with this record key (an aggregate id)")
        if name == "rebuild":
            from app.operations.rebuild import add_arguments as add_rebuild_arguments
            add_rebuild_arguments(p)
        if name == "token":
            from app.operations.tokens import add_arguments as add_token_arguments
            add_token_arguments(p)
        if name == "lag":
            from app.operations.lag import add_arguments
            add_arguments(p)
        if name == "schemas":
            from app.operations.schema_gate import add_arguments as add_schema_arguments
            add_schema_arguments(p)
        if name == "worker":
            from agents.projections import PROJECTIONS
            p.add_argument("projection", choices=PROJECTIONS)
            p.add_argument("--log-level", default="warning", choices=["error", "warning", "info", "debug"])
        if name in ("relay", "worker"):
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--metrics-port", type=int, default=0,
                           help="serve /metrics on this port (a worker also /healthz and /readyz; 0: off)")
        if name in SERVER_DEFAULTS:
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=SERVER_DEFAULTS[name])
            p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServiceUnavailable as exc:
        print(f"cqrs {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).upper()
        print(f"cqrs {args.command}: {f'setting {where}: ' if where else ''}{first['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
