"""Schema registry client (Confluent REST API), used unchanged against the local registry."""
from __future__ import annotations

from typing import Protocol

from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors import ServiceInfo, ServiceUnavailable


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    schema_registry_url: str
    connect_timeout_s: float


SERVICE = "schema-registry"


def registry_client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient({
        "url": settings.schema_registry_url,
        "timeout": settings.connect_timeout_s,
        "max.retries": 1,
    })


def check(settings: Settings) -> ServiceInfo:
    """List subjects within the connect timeout, or raise ServiceUnavailable."""
    try:
        subjects = registry_client(settings).get_subjects()
    except Exception as exc:  # httpx transport errors and registry errors alike mean "not usable"
        raise ServiceUnavailable(SERVICE, settings.schema_registry_url, f"{type(exc).__name__}: {exc}") from None
    return ServiceInfo(SERVICE, settings.schema_registry_url, f"{len(subjects)} subject(s)")
