"""MongoDB-wire-protocol read store (FerretDB locally) through pymongo."""
from __future__ import annotations

from typing import Any, Protocol

from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from connectors import ServiceInfo, ServiceUnavailable, redact_url, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    mongo_url: str
    mongo_database: str
    connect_timeout_s: float
    mongo_username: str | None
    mongo_password: Any  # SecretStr | None
    mongo_tls: bool
    mongo_tls_ca_file: str | None


SERVICE = "mongodb"


def security_options(settings: Settings) -> dict[str, Any]:
    """Credentials and TLS as pymongo keyword options (they win over the same options in MONGO_URL); the
    same for the sync and the async client."""
    options: dict[str, Any] = {}
    if settings.mongo_username:
        options |= {"username": settings.mongo_username, "password": secret(settings.mongo_password)}
    if settings.mongo_tls:
        options["tls"] = True
    if settings.mongo_tls_ca_file:
        options["tlsCAFile"] = settings.mongo_tls_ca_file
    return options


def client_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Every option of a client of the read store: timeouts from the connect timeout, then `overrides`
    (a caller's own socket timeout), then credentials and TLS."""
    timeout_ms = int(settings.connect_timeout_s * 1000)
    return {"serverSelectionTimeoutMS": timeout_ms, "connectTimeoutMS": timeout_ms,
            "socketTimeoutMS": max(timeout_ms, 30_000), "retryWrites": False, "tz_aware": True,
            **overrides, **security_options(settings)}


def mongo_client(settings: Settings, **overrides: Any) -> MongoClient:
    return MongoClient(settings.mongo_url, **client_options(settings, **overrides))


def async_mongo_client(settings: Settings, **overrides: Any) -> AsyncMongoClient:
    """The async client of the workers, the query API and rebuilds, with the same credentials and TLS."""
    return AsyncMongoClient(settings.mongo_url, **client_options(settings, **overrides))


def address(settings: Settings) -> str:
    """MONGO_URL for logs and errors, without a password it may carry."""
    return redact_url(settings.mongo_url)


def read_database(settings: Settings, client: MongoClient | None = None) -> Database:
    return (client or mongo_client(settings))[settings.mongo_database]


def check(settings: Settings) -> ServiceInfo:
    client = mongo_client(settings)
    try:
        info = client.admin.command("buildInfo")
    except PyMongoError as exc:
        raise ServiceUnavailable(SERVICE, address(settings), str(exc).split(" (configured timeouts")[0]) from None
    finally:
        client.close()
    flavour = info.get("ferretdb", {}).get("version") or info.get("ferretdbVersion")
    version = f"{info.get('version', '?')}" + (f" (FerretDB {flavour})" if flavour else "")
    return ServiceInfo(SERVICE, address(settings), version)
