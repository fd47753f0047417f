"""Elasticsearch 8.x through the official client."""
from __future__ import annotations

from typing import Any, Protocol

from elasticsearch import ApiError, AsyncElasticsearch, Elasticsearch, TransportError

from connectors import ServiceInfo, ServiceUnavailable, redact_url, secret


class Settings(Protocol):
    """The settings this connector reads: the application passes its settings object in (never imported here)."""

    elasticsearch_url: str
    connect_timeout_s: float
    elasticsearch_api_key: Any  # SecretStr | None
    elasticsearch_username: str | None
    elasticsearch_password: Any  # SecretStr | None
    elasticsearch_ca_certs: str | None


SERVICE = "elasticsearch"


def security_options(settings: Settings) -> dict[str, Any]:
    """An API key or basic auth, and the cluster's CA: keyword options of the sync and the async client."""
    options: dict[str, Any] = {}
    if settings.elasticsearch_api_key:
        options["api_key"] = secret(settings.elasticsearch_api_key)
    elif settings.elasticsearch_username:
        options["basic_auth"] = (settings.elasticsearch_username, secret(settings.elasticsearch_password) or "")
    if settings.elasticsearch_ca_certs:
        options["ca_certs"] = settings.elasticsearch_ca_certs
    return options


def es_client(settings: Settings, request_timeout: float = 30.0) -> Elasticsearch:
    return Elasticsearch(settings.elasticsearch_url, request_timeout=request_timeout, max_retries=2,
                         retry_on_timeout=False, **security_options(settings))


def async_es_client(settings: Settings, **options: Any) -> AsyncElasticsearch:
    """The async client of the workers, the query API and rebuilds: `options` (timeouts, retries) plus the
    credentials and CA."""
    return AsyncElasticsearch(settings.elasticsearch_url, **options, **security_options(settings))


def check(settings: Settings) -> ServiceInfo:
    client = Elasticsearch(settings.elasticsearch_url, request_timeout=settings.connect_timeout_s, max_retries=0,
                           **security_options(settings))
    try:
        info = client.info()
    except (TransportError, ApiError) as exc:
        address = redact_url(settings.elasticsearch_url)
        raise ServiceUnavailable(SERVICE, address, f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    return ServiceInfo(SERVICE, redact_url(settings.elasticsearch_url), info["version"]["number"])
