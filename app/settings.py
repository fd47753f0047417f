"""The one settings object, read from the environment; defaults point at the local stack."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors import redact_url
from domain.read_models import PRODUCTS_ALIAS


class Settings(BaseSettings):
    """Every knob the processes read. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    write_db_url: str = "postgresql://cqrs@127.0.0.1:5432/cqrs"  # password: write_db_password
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_database: str = "cqrs_read"
    elasticsearch_url: str = "http://127.0.0.1:9200"
    redis_url: str = "redis://127.0.0.1:6379/0"

    # ---- connection security: TLS and credentials of every connection (secrets: SecretStr, read from
    # the environment or from files in the secrets dir, see get_settings) ----
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for the brokers (else the system's).")
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    schema_registry_ca_file: str | None = None
    write_db_password: SecretStr | None = Field(None, description="Overrides any password in WRITE_DB_URL.")
    write_db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    write_db_sslrootcert: str | None = None
    mongo_username: str | None = None
    mongo_password: SecretStr | None = None
    mongo_tls: bool = False
    mongo_tls_ca_file: str | None = None
    elasticsearch_api_key: SecretStr | None = None
    elasticsearch_username: str | None = None
    elasticsearch_password: SecretStr | None = None
    elasticsearch_ca_certs: str | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_ca_file: str | None = None

    def __init__(self, **values: Any) -> None:
        # Every Settings() reads the secrets dir, not only get_settings(): tools, benchmarks and tests that
        # build their own Settings(...) reach the same authenticated services. An explicit _secrets_dir wins.
        values.setdefault("_secrets_dir", secrets_dir())
        super().__init__(**values)

    @model_validator(mode="after")
    def _credentials_are_consistent(self) -> Settings:
        """Refuse settings that would silently connect without the credentials or TLS they name."""
        problem = _credential_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A password written into a URL (older deployments) must not reach logs through repr/str.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name and name.endswith("_url") and isinstance(value, str) else value

    connect_timeout_s: float = Field(3.0, gt=0, le=60, description="Fail-fast bound for reaching any service.")
    topic_partitions: int = Field(6, ge=1, le=1024)
    topic_replication_factor: int = Field(1, ge=1, le=5)
    topic_prefix: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$",
                              description="Prefix of the event topics (isolates benchmarks and test runs).")

    auth_jwt_secret: SecretStr | None = Field(None, description=(
        "HS256 key that signs and verifies bearer tokens (local; `cqrs token issue` signs with it). In "
        "production leave it unset and set AUTH_JWKS_URL."))
    auth_jwks_url: str | None = Field(None, max_length=2048, description=(
        "The identity provider's JWKS document: tokens are verified with its RS256/ES256 keys."))
    auth_issuer: str = Field("cqrs-local", min_length=1, max_length=512, description="Required `iss` claim.")
    auth_audience: str = Field("cqrs-pipeline", min_length=1, max_length=512, description="Required `aud` claim.")
    auth_roles_claim: str = Field("roles", min_length=1, max_length=100,
                                  description="The claim holding the caller's roles (a list of names).")
    auth_leeway_s: float = Field(10.0, ge=0, le=300, description="Clock skew tolerated on `exp`/`nbf`.")
    rate_limit_per_s: float = Field(100.0, gt=0, le=1_000_000, description=(
        "Requests per second each caller (token subject, or client address without a token) may make to "
        "one API, sustained."))
    rate_limit_burst: int = Field(200, ge=1, le=10_000_000, description="Requests a caller may make at once.")
    metrics_public: bool = Field(False, description=(
        "Serve the HTTP services' /metrics without a token (only where the port is reachable by the "
        "scraper alone); by default it needs an `operator` or `admin` token."))
    # ---- overload: a process sheds `/api/` requests past its capacity instead of queueing them (app/http/admission.py)
    max_in_flight: int = Field(64, ge=1, le=100_000, description=(
        "The most requests under /api/ a process handles at once before it answers 503 overloaded (with "
        "Retry-After); how many it takes below that follows ADMISSION_TARGET_MS."))
    admission_target_ms: int = Field(50, ge=0, le=60_000, description=(
        "The time an admitted request should take: slower answers while the process is short of CPU (its "
        "event loop late) lower the number admitted at once, quicker ones raise it again (up to "
        "MAX_IN_FLIGHT). Slow answers of a slow store do not lower it. 0: a fixed MAX_IN_FLIGHT."))
    admission_busy_cores: float = Field(0.25, ge=0, le=64, description=(
        "Slow answers lower the admission limit only while the process itself uses at least this many cores "
        "(over the latest second) and its event loop runs late: then admitting fewer relieves it. A loop late "
        "in a process doing little is a machine busy with other work, which shedding here would not relieve."))
    admission_floor: int = Field(4, ge=1, le=100_000, description=(
        "The fewest requests admitted at once however slow answers get (capped by MAX_IN_FLIGHT)."))
    admission_wait_ms: int = Field(20, ge=0, le=1000, description=(
        "How long a request may wait for a free slot before it is shed (0: shed at once). At capacity a slot "
        "frees every few ms, so 20 ms absorbs a short burst and still answers a shed request fast."))
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    db_pool_min: int = Field(2, ge=1, le=100)
    db_pool_max: int = Field(20, ge=1, le=200)
    outbox_relay_enabled: bool = True
    outbox_linger_ms: int = Field(1, ge=0, le=1000)
    outbox_poll_interval_s: float = Field(1.0, gt=0, le=60)
    outbox_keep_hours: float = Field(24.0, ge=0, le=24 * 365, description=(
        "Published outbox rows older than this are pruned by the relay (the event topics keep every event)."))
    idempotency_retention_hours: int = Field(24, ge=1, le=24 * 30)

    es_products_alias: str = Field(PRODUCTS_ALIAS, min_length=1, max_length=255,
                                   description="The Elasticsearch alias the query API searches for products.")
    query_timeout_s: float = Field(5.0, gt=0, le=60,
                                   description="Time budget of one query API request across all its store calls.")
    freshness_max_lag_s: float = Field(2.0, ge=0, le=3600,
                                       description="A single order whose view may lag more than this is read from "
                                                   "the write model.")

    projection_batch_size: int = Field(1000, ge=1, le=50_000, description="Events per projection batch (take n).")
    projection_batch_wait_s: float = Field(0.25, gt=0, le=30, description="Longest wait to fill a batch.")
    projection_group_suffix: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$",
                                         description="Appended to each projection's consumer group (tests, rebuilds).")
    projection_start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading.")
    worker_session_timeout_s: float = Field(10.0, ge=3, le=300,
                                            description="How soon a dead worker's partitions move to another.")
    worker_fetch_wait_ms: int = Field(1500, ge=0, le=1500, description=(
        "How long a worker's Kafka fetch may wait for WORKER_FETCH_MIN_BYTES (Faust's own 1500 by default)."))
    worker_fetch_min_bytes: int = Field(1, ge=1, le=50 << 20, description=(
        "Bytes a worker's fetch waits for (1, Faust's own, by default; 1 MiB with a 100 ms wait cut the "
        "workers' CPU by a fifth at a trickle, but see README: Projections)."))
    worker_fetch_gather_ms: int = Field(50, ge=0, le=1000, description=(
        "How long a worker lets fetched records gather before it takes them from its Kafka consumer: one "
        "fetch per pause instead of one per relay publish, for at most this much more latency (0: Faust's "
        "own, no pause)."))
    worker_producer_linger_ms: int = Field(50, ge=0, le=1000, description=(
        "How long a worker's producer gathers changelog records into one request (Faust's own is 0: a request "
        "per record or two). Faust flushes the producer before it commits offsets, so a commit never covers an "
        "unwritten changelog record; the read models are written before, so visibility does not wait for it."))
    sales_copy_interval_s: float = Field(1.0, ge=0, le=60, description=(
        "Least time between two copies of the sales figures into MongoDB and the search index (counters in "
        "Redis are exact at once; a copy per interval coalesces a hot product's changes)."))
    projection_tick_s: float = Field(2.0, gt=0, le=300, description="Interval of a projection's periodic upkeep.")
    gap_hold_seconds: float = Field(30.0, gt=0, le=3600, description="How long a sequence gap is held.")
    worker_data_dir: str = Field(str(Path(tempfile.gettempdir()) / "cqrs-workers"),
                                 description="Where workers keep Faust's data directory (<dir>/<app id>).")
    worker_stall_s: float = Field(20.0, gt=0, le=3600, description="How long a worker may receive nothing while its "
                                  "partitions have unprocessed records before it re-reads them, and after twice "
                                  "that, restarts.")
    worker_restore_stall_s: float = Field(10.0, gt=0, le=3600, description="How long a restore of a worker's "
                                          "tables may read nothing while Kafka answers before the worker restarts.")

    @field_validator("auth_jwt_secret", "auth_jwks_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _one_way_to_verify_tokens(self) -> "Settings":
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret.get_secret_value()) < 32:
            raise ValueError("AUTH_JWT_SECRET must be at least 32 characters")
        return self


def local_state_dir() -> Path:
    """The local stack's state dir. The same rule as deploy/local/base.py StackPaths.from_env, duplicated on
    purpose: the stack scripts run without the virtualenv and cannot import app/ (a unit test keeps the two
    equal)."""
    if os.geteuid() == 0:
        return Path(os.environ.get("CQRS_STATE_DIR", "/var/lib/cqrs-pipeline"))
    return Path(os.environ.get("CQRS_STATE_DIR", Path.home() / ".local" / "state" / "cqrs-pipeline"))


def secrets_dir() -> Path | None:
    """Where secrets are read from as files named after the fields (e.g. `redis_password`): CQRS_SECRETS_DIR
    (Kubernetes mounts the Secret there), else the local stack's generated `<state>/secrets` if it exists,
    so that a process started beside the local stack authenticates with no setup. Environment variables
    still win over files."""
    explicit = os.environ.get("CQRS_SECRETS_DIR", "").strip()
    if explicit:
        return Path(explicit)
    local = local_state_dir() / "secrets"
    return local if local.is_dir() else None


def _credential_problem(s: Settings) -> str | None:
    """The first inconsistent combination of connection settings, as one line naming the variables."""
    sasl = s.kafka_security_protocol.startswith("SASL_")
    tls = s.kafka_security_protocol in ("SSL", "SASL_SSL")
    sasl_set = [n for n in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password") if getattr(s, n)]
    if sasl and len(sasl_set) < 3:
        return (f"KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} needs KAFKA_SASL_MECHANISM, "
                f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (set: {', '.join(sasl_set).upper() or 'none'})")
    if not sasl and sasl_set:
        return (f"{', '.join(sasl_set).upper()} set but KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} "
                f"does not use SASL (SASL_SSL?)")
    ssl_set = [n for n in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
               if getattr(s, n)]
    if not tls and ssl_set:
        return (f"{', '.join(ssl_set).upper()} set but KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} "
                f"does not use TLS (SSL or SASL_SSL?)")
    if (s.kafka_ssl_keyfile or s.kafka_ssl_key_password) and not s.kafka_ssl_certfile:
        return "KAFKA_SSL_KEYFILE/KAFKA_SSL_KEY_PASSWORD set without KAFKA_SSL_CERTFILE"
    if bool(s.schema_registry_username) != bool(s.schema_registry_password):
        return "SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD go together: set both or neither"
    if s.mongo_password and not s.mongo_username:
        return "MONGO_PASSWORD set without MONGO_USERNAME"
    if s.elasticsearch_api_key and (s.elasticsearch_username or s.elasticsearch_password):
        return "set either ELASTICSEARCH_API_KEY or ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD, not both"
    if bool(s.elasticsearch_username) != bool(s.elasticsearch_password):
        return "ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD go together: set both or neither"
    if s.redis_username and not s.redis_password:
        return "REDIS_USERNAME set without REDIS_PASSWORD"
    if s.redis_ca_file and not (s.redis_tls or s.redis_url.startswith("rediss://")):
        return "REDIS_CA_FILE set but REDIS_TLS is false (and REDIS_URL is not rediss://)"
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings: environment, then files in the secrets dir, then defaults."""
    return Settings(_secrets_dir=secrets_dir())
