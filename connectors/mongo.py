"""MongoDB-wire-protocol read store (FerretDB locally) through pymongo."""
from __future__ import annotations

from typing import Protocol

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from connectors import ServiceInfo, ServiceUnavailable


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    mongo_url: str
    mongo_database: str
    connect_timeout_s: float


SERVICE = "mongodb"


def mongo_client(settings: Settings) -> MongoClient:
    timeout_ms = int(settings.connect_timeout_s * 1000)
    return MongoClient(settings.mongo_url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                       socketTimeoutMS=max(timeout_ms, 30_000), retryWrites=False, tz_aware=True)


def read_database(settings: Settings, client: MongoClient | None = None) -> Database:
    return (client or mongo_client(settings))[settings.mongo_database]


def check(settings: Settings) -> ServiceInfo:
    client = mongo_client(settings)
    try:
        info = client.admin.command("buildInfo")
    except PyMongoError as exc:
        raise ServiceUnavailable(SERVICE, settings.mongo_url, str(exc).split(" (configured timeouts")[0]) from None
    finally:
        client.close()
    flavour = info.get("ferretdb", {}).get("version") or info.get("ferretdbVersion")
    version = f"{info.get('version', '?')}" + (f" (FerretDB {flavour})" if flavour else "")
    return ServiceInfo(SERVICE, settings.mongo_url, version)
