"""The schema compatibility gate: compare local .avsc files with their subjects in the registry, and
register them only when every subject passes its compatibility level.

Guarantees: a subject passes iff its schema parses and `schemas.compatibility.check_mode` finds no
incompatibility under the subject's level (`--mode`, else the registry's subject level, else its global
level, else BACKWARD); a subject with no registered version passes. `register` sends nothing unless
every subject passes (or `--force`), and never sends a schema that does not parse. A registry that
cannot be reached raises ServiceUnavailable (one line) before anything is printed or registered.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from app.settings import Settings
from connectors import ServiceUnavailable, redact_url
from connectors.registry import SERVICE, registry_client
from schemas import SCHEMA_DIR, subject_for
from schemas.compatibility import Finding, Mode, ModeCheck, SchemaParseError, check_mode, parse

DEFAULT_MODE = Mode.BACKWARD
Status = Literal["ok", "new", "incompatible", "invalid"]
T = TypeVar("T")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the registry client raises when no HTTP answer arrives (it uses httpx2 when installed)."""
    try:
        from confluent_kafka.schema_registry.common._httpx_compat import httpx as client_http
    except ImportError:
        import httpx as client_http
    return (client_http.HTTPError, OSError)


TRANSPORT_ERRORS = _transport_errors()


class GateError(RuntimeError):
    """The gate cannot run with what it was given (no schema files, for one); one-line message."""


@dataclass(frozen=True)
class LocalSchema:
    """One .avsc file: its topic is the file name without `.avsc`, its subject `<prefix><topic>-value`."""

    topic: str
    subject: str
    path: Path
    schema: Any
    error: str | None = None


@dataclass(frozen=True)
class SubjectCheck:
    local: LocalSchema
    status: Status
    mode: Mode | None = None
    mode_source: str = ""
    result: ModeCheck | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status in ("ok", "new")


@dataclass(frozen=True)
class GateReport:
    checks: tuple[SubjectCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Registration:
    subject: str
    outcome: Literal["registered", "unchanged", "failed"]
    version: int | None = None
    schema_id: int | None = None
    detail: str = ""


def load_local(directory: Path, prefix: str) -> list[LocalSchema]:
    """Every `*.avsc` in `directory`, sorted by name; a file that is not a valid schema carries `error`."""
    if not directory.is_dir():
        raise GateError(f"no such directory: {directory}")
    files = sorted(directory.glob("*.avsc"))
    if not files:
        raise GateError(f"no .avsc files in {directory}")
    return [_load_file(path, prefix) for path in files]


def _load_file(path: Path, prefix: str) -> LocalSchema:
    topic = path.stem
    subject = subject_for(prefix + topic)
    try:
        schema = json.loads(path.read_text())
        parse(schema)
    except (json.JSONDecodeError, SchemaParseError) as exc:
        return LocalSchema(topic, subject, path, None, f"{path.name}: {exc}")
    return LocalSchema(topic, subject, path, schema)


def _reachable(settings: Settings, call: Callable[..., T], *args: Any) -> T:
    """Run one registry call; transport failures and server errors become ServiceUnavailable."""
    try:
        return call(*args)
    except SchemaRegistryError as exc:
        if exc.http_status_code >= 500:
            raise ServiceUnavailable(SERVICE, redact_url(settings.schema_registry_url),
                                     f"HTTP {exc.http_status_code}: {exc.error_message}") from None
        raise
    except TRANSPORT_ERRORS as exc:
        raise ServiceUnavailable(SERVICE, redact_url(settings.schema_registry_url),
                                 f"{type(exc).__name__}: {exc}") from None


def _not_found(exc: SchemaRegistryError) -> bool:
    return exc.http_status_code == 404


def compatibility_level(settings: Settings, client: SchemaRegistryClient, subject: str,
                        override: Mode | None) -> tuple[Mode, str]:
    """The level to apply and where it came from: `--mode`, the subject's level, the global level, or BACKWARD."""
    if override is not None:
        return override, "--mode"
    for source, args in (("registry", (subject,)), ("registry global", ())):
        try:
            return Mode.parse(_reachable(settings, client.get_compatibility, *args)), source
        except SchemaRegistryError as exc:
            if not _not_found(exc):
                raise ServiceUnavailable(SERVICE, redact_url(settings.schema_registry_url), str(exc)) from None
        except ValueError:
            continue
    return DEFAULT_MODE, "default"


def registered_versions(settings: Settings, client: SchemaRegistryClient, subject: str,
                        transitive: bool) -> list[tuple[int, Any]]:
    """(version, schema JSON) of the subject, oldest first: every version when `transitive`, else the latest.
    A version registered as another schema type raises GateError."""
    try:
        versions = sorted(_reachable(settings, client.get_versions, subject))
    except SchemaRegistryError as exc:
        if _not_found(exc):
            return []
        raise ServiceUnavailable(SERVICE, redact_url(settings.schema_registry_url), str(exc)) from None
    pairs = []
    for version in versions if transitive else versions[-1:]:
        registered = _reachable(settings, client.get_version, subject, version)
        schema_type = (registered.schema.schema_type or "AVRO").upper()
        if schema_type != "AVRO":
            raise GateError(f"{subject} version {version} is a {schema_type} schema, not AVRO")
        pairs.append((version, json.loads(registered.schema.schema_str)))
    return pairs


def check_subject(settings: Settings, client: SchemaRegistryClient, local: LocalSchema, existing: set[str],
                  override: Mode | None) -> SubjectCheck:
    """The verdict for one local schema against its subject."""
    if local.error:
        return SubjectCheck(local, "invalid", detail=local.error)
    mode, source = compatibility_level(settings, client, local.subject, override)
    if local.subject not in existing:
        return SubjectCheck(local, "new", mode, source, detail="new subject, nothing to compare")
    try:
        registered = registered_versions(settings, client, local.subject, mode.transitive)
        result = check_mode(local.schema, registered, mode)
    except (GateError, SchemaParseError) as exc:
        return SubjectCheck(local, "invalid", mode, source, detail=f"registered schema unusable: {exc}")
    if not registered:
        return SubjectCheck(local, "new", mode, source, detail="new subject, nothing to compare")
    status: Status = "ok" if result.compatible else "incompatible"
    return SubjectCheck(local, status, mode, source, result, _against(result))


def _against(result: ModeCheck) -> str:
    if not result.compared:
        return "not checked"
    return "against " + ", ".join(f"v{v}" for v in result.compared)


def check_schemas(settings: Settings, directory: Path = SCHEMA_DIR, override: Mode | None = None,
                  client: SchemaRegistryClient | None = None) -> GateReport:
    """Check every schema of `directory` against the registry (see the module's guarantees)."""
    locals_ = load_local(directory, settings.topic_prefix)
    client = client or registry_client(settings)
    existing = set(_reachable(settings, client.get_subjects))
    return GateReport(tuple(check_subject(settings, client, local, existing, override) for local in locals_))


def register_schemas(settings: Settings, schemas: Iterable[LocalSchema],
                     client: SchemaRegistryClient | None = None) -> list[Registration]:
    """Register each parsed schema under its subject; an already registered schema is left as it is."""
    client = client or registry_client(settings)
    return [_register_one(settings, client, local) for local in schemas if not local.error]


def _register_one(settings: Settings, client: SchemaRegistryClient, local: LocalSchema) -> Registration:
    schema = Schema(json.dumps(local.schema), "AVRO")
    try:
        found = _reachable(settings, client.lookup_schema, local.subject, schema)
        return Registration(local.subject, "unchanged", found.version, found.schema_id)
    except SchemaRegistryError as exc:
        if not _not_found(exc):
            return Registration(local.subject, "failed", detail=_one_line(exc))
    try:
        schema_id = _reachable(settings, client.register_schema, local.subject, schema)
        found = _reachable(settings, client.lookup_schema, local.subject, schema)
    except SchemaRegistryError as exc:
        return Registration(local.subject, "failed", detail=f"registry refused: {_one_line(exc)}")
    return Registration(local.subject, "registered", found.version, schema_id)


def _one_line(exc: SchemaRegistryError) -> str:
    return " ".join(f"HTTP {exc.http_status_code}: {exc.error_message}".split())[:300]


def format_check(check: SubjectCheck, width: int = 0) -> list[str]:
    """One line per subject, then one indented line per distinct incompatibility and note."""
    subject = f"{check.local.subject:<{width}}"
    if check.status == "invalid":
        return [f"INVALID       {subject}  {check.detail}"]
    head = "ok          " if check.passed else "INCOMPATIBLE"
    lines = [f"{head}  {subject}  {check.mode.value} ({check.mode_source}), {check.detail}"]
    if check.result is not None:
        lines += [f"    {text}" for text in _grouped(check.result.incompatibilities)]
        lines += [f"    note: {text}" for text in _grouped(check.result.notes)]
    return lines


def _grouped(findings: Iterable[Finding]) -> list[str]:
    """`path: reason [v1, v2]`, one entry per distinct (direction, path, reason), versions merged."""
    versions: dict[tuple[str, str, str], list[int]] = {}
    for finding in findings:
        key = (finding.direction.value, finding.item.path, _text(finding.item))
        versions.setdefault(key, []).append(finding.version)
    return [f"{path}: {text} [{', '.join(f'v{v}' for v in vs)}]" for (_, path, text), vs in versions.items()]


def _text(item: Any) -> str:
    return getattr(item, "reason", None) or item.message


def format_registration(reg: Registration, width: int = 0) -> str:
    subject = f"{reg.subject:<{width}}"
    if reg.outcome == "failed":
        return f"FAILED        {subject}  {reg.detail}"
    return f"{reg.outcome:<12}  {subject}  version {reg.version}  id {reg.schema_id}"


def run(action: Literal["check", "register"], settings: Settings, directory: Path | None = None,
        mode: str | None = None, force: bool = False) -> int:
    """`cqrs schemas check|register`: 0 all passed (and registered), 1 incompatible, invalid or refused;
    ServiceUnavailable propagates for the caller to print as one line (exit 2)."""
    client = registry_client(settings)   # one client (and its cache) for the check and the registration
    try:
        override = Mode.parse(mode) if mode else None
        report = check_schemas(settings, directory or SCHEMA_DIR, override, client)
    except (GateError, ValueError) as exc:
        print(f"cqrs schemas: {exc}", file=sys.stderr)
        return 1
    width = max(len(c.local.subject) for c in report.checks)
    for check in report.checks:
        print("\n".join(format_check(check, width)))
    failed = sum(not c.passed for c in report.checks)
    if action == "check":
        print(f"{len(report.checks)} subject(s), {failed} failing")
        return 1 if failed else 0
    if failed and not force:
        print(f"cqrs schemas: refusing to register: {failed} subject(s) failing the check (--force registers anyway)",
              file=sys.stderr)
        return 1
    registrations = register_schemas(settings, (c.local for c in report.checks), client)
    for reg in registrations:
        print(format_registration(reg, width))
    invalid = sum(c.status == "invalid" for c in report.checks)
    return 1 if invalid or any(r.outcome == "failed" for r in registrations) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `cqrs schemas`."""
    parser.add_argument("action", choices=["check", "register"])
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR,
                        help="directory of <topic>.avsc files to check (default: the project's schemas/)")
    parser.add_argument("--mode", type=str.upper, choices=[m.value for m in Mode],
                        help="compatibility level to apply instead of the registry's")
    parser.add_argument("--force", action="store_true", help="register: register even when the check fails")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of `cqrs schemas`."""
    return run(args.action, settings, args.dir, args.mode, args.force)
