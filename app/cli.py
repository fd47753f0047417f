"""The `cqrs` command line: one entry point for every process and operation of the pipeline."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

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
    from app.smoke import run_smoke

    run_smoke(get_settings())
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "check": (cmd_check, "check that every configured service answers"),
    "smoke": (cmd_smoke, "write and read back through every service, printing each step"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cqrs", description="CQRS stream-processing pipeline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServiceUnavailable as exc:
        print(f"cqrs {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
