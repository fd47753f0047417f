"""Schema registry client (Confluent REST API), used unchanged against the local registry."""
from __future__ import annotations

from typing import Any, Protocol

from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors import ServiceInfo, ServiceUnavailable, redact_url, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    schema_registry_url: str
    connect_timeout_s: float
    schema_registry_username: str | None
    schema_registry_password: Any  # SecretStr | None
    schema_registry_ca_file: str | None


SERVICE = "schema-registry"


def client_config(settings: Settings) -> dict[str, Any]:
    """SchemaRegistryClient's configuration: basic auth and the registry's CA when set."""
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": settings.connect_timeout_s,
        "max.retries": 1,
    }
    if settings.schema_registry_username:
        config["basic.auth.user.info"] = (f"{settings.schema_registry_username}:"
                                          f"{secret(settings.schema_registry_password) or ''}")
    if settings.schema_registry_ca_file:
        config["ssl.ca.location"] = settings.schema_registry_ca_file
    return config


def registry_client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient(client_config(settings))


def check(settings: Settings) -> ServiceInfo:
    """List subjects within the connect timeout, or raise ServiceUnavailable."""
    try:
        subjects = registry_client(settings).get_subjects()
    except Exception as exc:  # httpx transport errors and registry errors alike mean "not usable"
        address = redact_url(settings.schema_registry_url)
        raise ServiceUnavailable(SERVICE, address, f"{type(exc).__name__}: {exc}") from None
    return ServiceInfo(SERVICE, redact_url(settings.schema_registry_url), f"{len(subjects)} subject(s)")
