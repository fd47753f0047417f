"""Elasticsearch 8.x through the official client."""
from __future__ import annotations

from typing import Protocol

from elasticsearch import ApiError, Elasticsearch, TransportError

from connectors import ServiceInfo, ServiceUnavailable


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    elasticsearch_url: str
    connect_timeout_s: float


SERVICE = "elasticsearch"


def es_client(settings: Settings, request_timeout: float = 30.0) -> Elasticsearch:
    return Elasticsearch(settings.elasticsearch_url, request_timeout=request_timeout, max_retries=2,
                         retry_on_timeout=False)


def check(settings: Settings) -> ServiceInfo:
    client = Elasticsearch(settings.elasticsearch_url, request_timeout=settings.connect_timeout_s, max_retries=0)
    try:
        info = client.info()
    except (TransportError, ApiError) as exc:
        raise ServiceUnavailable(SERVICE, settings.elasticsearch_url, f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    return ServiceInfo(SERVICE, settings.elasticsearch_url, info["version"]["number"])
