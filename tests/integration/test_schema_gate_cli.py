"""`cqrs schemas check|register` run as commands against the real local registry, on isolated subjects."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from app.settings import Settings
from connectors.registry import registry_client
from schemas import SCHEMA_DIR, TOPICS, subject_for
from tests.conftest import ROOT


def _cqrs(*args: str, prefix: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TOPIC_PREFIX": prefix, **env}
    return subprocess.run([sys.executable, "-m", "app.cli", "schemas", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=environment)


def _delete_subjects(settings: Settings, prefix: str) -> None:
    client = registry_client(settings)
    for subject in [s for s in client.get_subjects() if s.startswith(prefix)]:
        for permanent in (False, True):
            with contextlib.suppress(SchemaRegistryError):
                client.delete_subject(subject, permanent=permanent)


@pytest.fixture
def prefix(stack: Settings) -> Iterator[str]:
    """A topic prefix nobody else uses; its subjects are deleted (soft, then permanently) afterwards."""
    value = f"sg{uuid.uuid4().hex[:6]}-"
    yield value
    _delete_subjects(stack, value)


@pytest.fixture(scope="module")
def registered(stack: Settings) -> Iterator[str]:
    """A prefix with the current schemas registered, shared by the tests that only read its subjects."""
    value = f"sg{uuid.uuid4().hex[:6]}-"
    proc = _cqrs("register", prefix=value)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield value
    _delete_subjects(stack, value)


def _edited_copy(tmp_path: Path, topic: str, edit: Callable[[dict], None]) -> Path:
    """A copy of schemas/*.avsc with `edit` applied to the envelope of `topic`."""
    directory = tmp_path / "proposed"
    directory.mkdir()
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, directory / path.name)
    target = directory / f"{topic}.avsc"
    schema = json.loads(target.read_text())
    edit(schema)
    target.write_text(json.dumps(schema, indent=2))
    return directory


def _payload_record(schema: dict, name: str) -> dict:
    payload = next(f for f in schema["fields"] if f["name"] == "payload")
    return next(b for b in payload["type"] if b["name"] == name)


def _add_field(record: str, field: dict) -> Callable[[dict], None]:
    return lambda schema: _payload_record(schema, record)["fields"].append(field)


def _remove_branch(record: str) -> Callable[[dict], None]:
    def edit(schema: dict) -> None:
        payload = next(f for f in schema["fields"] if f["name"] == "payload")
        payload["type"] = [b for b in payload["type"] if b["name"] != record]
    return edit


def _subject_line(stdout: str, subject: str) -> str:
    return next(line for line in stdout.splitlines() if f"  {subject} " in f"{line} ")


def test_register_prints_subject_version_and_id_and_is_idempotent(prefix, stack):
    first = _cqrs("register", prefix=prefix)
    assert first.returncode == 0, first.stdout + first.stderr
    client = registry_client(stack)
    for topic in TOPICS:
        subject = subject_for(prefix + topic)
        schema_id = client.get_version(subject, 1).schema_id
        expected = rf"^registered    {re.escape(subject)} +version 1  id {schema_id}$"
        assert re.search(expected, first.stdout, re.MULTILINE), first.stdout
    again = _cqrs("register", prefix=prefix)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("unchanged     ") == len(TOPICS)
    assert all(client.get_versions(subject_for(prefix + t)) == [1] for t in TOPICS)


def test_unregistered_subjects_are_new_and_pass(prefix):
    proc = _cqrs("check", prefix=prefix)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for topic in TOPICS:
        line = _subject_line(proc.stdout, subject_for(prefix + topic))
        assert line.startswith("ok") and line.endswith("new subject, nothing to compare")


def test_check_of_the_registered_schemas_passes(registered):
    proc = _cqrs("check", prefix=registered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for topic in TOPICS:
        line = _subject_line(proc.stdout, subject_for(registered + topic))
        assert line.startswith("ok") and "BACKWARD" in line and line.endswith("against v1")


def test_optional_payload_field_with_default_passes(registered, tmp_path):
    proposed = _edited_copy(tmp_path, "order-events", _add_field(
        "OrderShipped", {"name": "carrier", "type": ["null", "string"], "default": None}))
    proc = _cqrs("check", "--dir", str(proposed), prefix=registered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _subject_line(proc.stdout, subject_for(registered + "order-events")).startswith("ok")


def test_required_payload_field_fails_naming_subject_field_and_reason(registered, tmp_path):
    proposed = _edited_copy(tmp_path, "order-events", _add_field(
        "OrderCreated", {"name": "currency", "type": "string"}))
    proc = _cqrs("check", "--dir", str(proposed), prefix=registered)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    subject = subject_for(registered + "order-events")
    assert _subject_line(proc.stdout, subject).startswith("INCOMPATIBLE")
    assert ("    OrderEvent.payload[OrderCreated].currency: field 'currency' was added without a default: "
            "data written with the old schema cannot be read [v1]") in proc.stdout.splitlines()
    for topic in ("product-events", "customer-events"):
        assert _subject_line(proc.stdout, subject_for(registered + topic)).startswith("ok")


def test_removed_union_branch_fails(registered, tmp_path):
    proposed = _edited_copy(tmp_path, "order-events", _remove_branch("OrderDelivered"))
    proc = _cqrs("check", "--dir", str(proposed), prefix=registered)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _subject_line(proc.stdout, subject_for(registered + "order-events")).startswith("INCOMPATIBLE")
    assert "OrderEvent.payload[OrderDelivered]: union branch OrderDelivered removed" in proc.stdout


def test_mode_flag_overrides_the_registry_level(registered, tmp_path):
    def widen_quantity(schema: dict) -> None:
        line = _payload_record(schema, "OrderCreated")["fields"][1]["type"]["items"]
        next(f for f in line["fields"] if f["name"] == "quantity")["type"] = "long"

    proposed = _edited_copy(tmp_path, "order-events", widen_quantity)
    assert _cqrs("check", "--dir", str(proposed), prefix=registered).returncode == 0
    proc = _cqrs("check", "--dir", str(proposed), "--mode", "full", prefix=registered)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FULL (--mode)" in proc.stdout
    assert "OrderEvent.payload[OrderCreated].items[].quantity: type changed from int to long" in proc.stdout


def test_register_refuses_an_incompatible_schema(registered, tmp_path, stack):
    proposed = _edited_copy(tmp_path, "customer-events", _add_field(
        "CustomerRegistered", {"name": "tier", "type": "string"}))
    proc = _cqrs("register", "--dir", str(proposed), prefix=registered)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "cqrs schemas: refusing to register: 1 subject(s) failing the check (--force registers anyway)"]
    assert "registered" not in proc.stdout
    assert registry_client(stack).get_versions(subject_for(registered + "customer-events")) == [1]


def test_unreachable_registry_exits_2_with_one_line(prefix):
    started = time.monotonic()
    proc = _cqrs("check", prefix=prefix, timeout=30, SCHEMA_REGISTRY_URL="http://127.0.0.1:9")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "cqrs schemas: schema-registry unreachable at http://127.0.0.1:9"), proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_directory_without_schemas_is_one_line_error(prefix, tmp_path):
    proc = _cqrs("check", "--dir", str(tmp_path), prefix=prefix)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"cqrs schemas: no .avsc files in {tmp_path}"
