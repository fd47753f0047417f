"""Local stack manager: install on first use, start, health-check, stop and inspect every server.

Usage: deploy/local/stack up [SERVICE...] | down [SERVICE...] | status | logs [SERVICE] [-n N]

Installs go to a cache outside the repository and data/logs/pids to one state directory
(printed by `status`), so fresh clones and CI runs reuse what an earlier run installed.
Every wait is bounded; a failure prints one line naming the service, what was tried and its log.
Credentials (Redis ACL user, PostgreSQL role password, the API token signing key) are generated once
into <state>/secrets, where the application's settings find them (deploy/local/credentials.py).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.local.base import StackError, StackPaths  # noqa: E402
from deploy.local.credentials import ensure_secrets, secrets_dir  # noqa: E402
from deploy.local.services import Health, Service  # noqa: E402

# Start order; a service is started once every service it depends on is healthy.
SERVICE_CLASSES = {
    "postgres": ("deploy.local.services.postgres", "Postgres", ()),
    "redis": ("deploy.local.services.redis", "Redis", ()),
    "kafka": ("deploy.local.services.kafka", "Kafka", ()),
    "elasticsearch": ("deploy.local.services.elasticsearch", "Elasticsearch", ()),
    "ferretdb": ("deploy.local.services.ferretdb", "FerretDB", ("postgres",)),
    "registry": ("deploy.local.services.registry", "SchemaRegistry", ()),
}


def load_services(names: list[str] | None = None) -> dict[str, Service]:
    chosen = names or list(SERVICE_CLASSES)
    unknown = [n for n in chosen if n not in SERVICE_CLASSES]
    if unknown:
        raise StackError(f"unknown service {unknown[0]!r}; known: {', '.join(SERVICE_CLASSES)}")
    services = {}
    for name in SERVICE_CLASSES:  # keep the canonical order
        if name in chosen:
            module, cls, _ = SERVICE_CLASSES[name]
            services[name] = getattr(importlib.import_module(module), cls)()
    return services


def depends_on(name: str) -> tuple[str, ...]:
    return SERVICE_CLASSES[name][2]


def say(msg: str) -> None:
    print(msg, flush=True)


def install_all(paths: StackPaths, services: dict[str, Service]) -> None:
    """Install what is missing. Maven-based installs run one after another (shared local repository);
    the rest run beside them."""
    missing = [s for s in services.values() if not s.installed(paths)]
    if not missing:
        return
    maven = [s for s in missing if s.name in ("kafka", "registry", "elasticsearch")]
    others = [s for s in missing if s not in maven]

    def install(group: list[Service]) -> None:
        for svc in group:
            t0 = time.monotonic()
            say(f"  installing {svc.name} (first use) ...")
            svc.install(paths)
            say(f"  installed {svc.name} in {time.monotonic() - t0:.0f}s")

    with ThreadPoolExecutor(max_workers=1 + len(others)) as pool:
        futures = [pool.submit(install, maven)] + [pool.submit(install, [s]) for s in others]
        errors = [f.exception() for f in futures if f.exception()]
    if errors:
        raise errors[0]


def up(paths: StackPaths, services: dict[str, Service]) -> None:
    t0 = time.monotonic()
    paths.ensure_layout()
    ensure_secrets(paths)  # once, before any recipe needs one (redis_password, write_db_password, ...)
    install_all(paths, services)
    pending = dict(services)
    healthy: set[str] = set()
    started_at: dict[str, float] = {}
    for name, svc in services.items():
        for dep in depends_on(name):
            if dep not in services:
                dep_health = load_services([dep])[dep].probe(paths)
                if not dep_health.healthy:
                    raise StackError(f"{name}: needs {dep}, which is not healthy ({dep_health.detail}); "
                                     f"run: deploy/local/stack up {dep}")
                healthy.add(dep)
    while pending:
        for name, svc in list(pending.items()):
            if name in started_at or not all(d in healthy for d in depends_on(name)):
                continue
            health = svc.probe(paths)
            if health.healthy:
                say(f"  {name}: already running")
                healthy.add(name)
                del pending[name]
                after_healthy(paths, svc)
                continue
            if health.restart_needed and svc.running(paths):
                say(f"  {name}: {health.detail}; restarting")
                svc.stop(paths)
            if not svc.running(paths):
                svc.start(paths)
            started_at[name] = time.monotonic()
        for name in [n for n in pending if n in started_at]:
            svc = pending[name]
            health = svc.probe(paths)
            if health.healthy:
                say(f"  {name}: healthy after {time.monotonic() - started_at[name]:.1f}s ({health.version})")
                healthy.add(name)
                del pending[name]
                after_healthy(paths, svc)
            elif not svc.running(paths):
                raise StackError(f"{name}: process exited during startup; tried {svc.address}"
                                 f" ({health.detail}); log: {svc.log_file(paths)}")
            elif time.monotonic() - started_at[name] > svc.startup_timeout:
                raise StackError(f"{name}: not healthy after {svc.startup_timeout:.0f}s; tried {svc.address}"
                                 f" ({health.detail}); log: {svc.log_file(paths)}")
        if pending:
            time.sleep(0.5)
    say(f"stack up in {time.monotonic() - t0:.1f}s")


def after_healthy(paths: StackPaths, svc: Service) -> None:
    hook = getattr(svc, "bootstrap", None)
    if hook is not None:
        hook(paths)


def down(paths: StackPaths, services: dict[str, Service]) -> None:
    for name, svc in reversed(list(services.items())):
        if svc.running(paths):
            svc.stop(paths)
            say(f"  {name}: stopped")
        else:
            say(f"  {name}: not running")


def status(paths: StackPaths, services: dict[str, Service]) -> bool:
    rows = []
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        healths: dict[str, Health] = dict(zip(services, pool.map(lambda s: s.probe(paths), services.values())))
    for name, svc in services.items():
        h = healths[name]
        rows.append((name, svc.address, h.version if h.healthy else "-",
                     "yes" if h.healthy else f"no ({h.detail})" if h.detail else "no"))
    header = ("SERVICE", "ADDRESS", "VERSION", "HEALTHY")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for row in [header, *rows]:
        say("  ".join(col.ljust(widths[i]) for i, col in enumerate(row[:3])) + "  " + row[3])
    say(f"state: {paths.state}   cache: {paths.cache}   secrets: {secrets_dir(paths)}")
    return all(h.healthy for h in healths.values())


def logs(paths: StackPaths, services: dict[str, Service], lines: int) -> None:
    for name, svc in services.items():
        log = svc.log_file(paths)
        say(f"==> {name}: {log}")
        if log.exists():
            with log.open("rb") as fh:
                tail = fh.read()[-200_000:].decode(errors="replace").splitlines()[-lines:]
            say("\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/local/stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("up", "down", "status", "logs"):
        p = sub.add_parser(cmd)
        p.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(SERVICE_CLASSES))
        if cmd == "logs":
            p.add_argument("-n", "--lines", type=int, default=40)
    args = parser.parse_args(argv)
    paths = StackPaths.from_env()
    try:
        services = load_services(args.services or None)
        if args.command == "up":
            up(paths, services)
            return 0 if status(paths, services) else 1
        if args.command == "down":
            down(paths, services)
            return 0
        if args.command == "status":
            return 0 if status(paths, services) else 1
        logs(paths, services, args.lines)
        return 0
    except StackError as exc:
        print(f"stack {args.command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
