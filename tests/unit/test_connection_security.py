"""TLS and credentials of every connection: the client options each connector builds from the settings,
secrets read from files, precedence, validation, and that no secret shows in a repr or redacted URL."""
from __future__ import annotations

import hashlib

import os
from pathlib import Path

import certifi
import psycopg
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from app.settings import Settings, local_state_dir, secrets_dir
from connectors import elasticsearch, kafka, mongo, postgres, redact_url, redis, registry
from deploy.local.base import StackPaths

SECRET = "s3cr3t-Value'x"
CA = certifi.where()  # a real CA bundle, so building a TLS context works offline


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No secrets dir or connection variable of the machine running the tests leaks in."""
    empty = tmp_path / "no-secrets"
    empty.mkdir()
    monkeypatch.setenv("CQRS_SECRETS_DIR", str(empty))
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def secured(**extra) -> Settings:
    return Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc",
        kafka_sasl_password=SECRET, kafka_ssl_cafile=CA,
        schema_registry_url="https://registry:8081/apis/ccompat/v7", schema_registry_username="reg",
        schema_registry_password=SECRET, schema_registry_ca_file=CA,
        write_db_url="postgresql://cqrs:old@db:5432/cqrs", write_db_password=SECRET, write_db_sslmode="verify-full",
        write_db_sslrootcert="/etc/ca.pem",
        mongo_username="reader", mongo_password=SECRET, mongo_tls=True, mongo_tls_ca_file=CA,
        elasticsearch_url="https://es:9200", elasticsearch_username="elastic", elasticsearch_password=SECRET,
        elasticsearch_ca_certs=CA,
        redis_url="redis://:inurl@cache:6379/2", redis_username="cqrs", redis_password=SECRET, redis_tls=True,
        redis_ca_file=CA, **extra)


# ---- client options ---------------------------------------------------------------------------

def test_defaults_are_plaintext_without_credentials():
    s = Settings()
    assert s.write_db_url == "postgresql://cqrs@127.0.0.1:5432/cqrs"
    assert kafka.security_config(s) == {"security.protocol": "PLAINTEXT"}
    assert "basic.auth.user.info" not in registry.client_config(s)
    assert postgres.conninfo(s) == "postgresql://cqrs@127.0.0.1:5432/cqrs"  # unchanged: nothing to add
    assert mongo.security_options(s) == elasticsearch.security_options(s) == redis.security_options(s) == {}


def test_kafka_config_carries_sasl_and_tls():
    assert kafka.security_config(secured()) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": SECRET, "ssl.ca.location": CA}
    base = kafka.base_config(secured())
    assert base["security.protocol"] == "SASL_SSL" and base["sasl.password"] == SECRET


def test_kafka_mutual_tls_config():
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA, kafka_ssl_certfile="/c.pem",
                 kafka_ssl_keyfile="/k.pem", kafka_ssl_key_password=SECRET)
    assert kafka.security_config(s) == {
        "security.protocol": "SSL", "ssl.ca.location": CA, "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem", "ssl.key.password": SECRET}


def test_faust_workers_get_the_same_sasl_over_tls():
    from agents.transport import Transport, broker_credentials
    from agents.worker import faust_app

    s = secured(worker_data_dir=str(Path(os.environ["CQRS_SECRETS_DIR"]).parent / "workers"))
    app = faust_app("order-views", s)
    assert app.conf.broker_credentials is not None and SECRET not in repr(app.conf.broker_credentials)
    assert isinstance(app.transport, Transport)  # still the guarded:// transport
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert {k: auth[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                                 "sasl_plain_password")} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": SECRET}
    assert auth["ssl_context"] is not None


def test_faust_tls_only_and_plaintext():
    from agents.transport import broker_credentials

    auth = credentials_to_aiokafka_auth(broker_credentials(Settings(kafka_security_protocol="SSL",
                                                                    kafka_ssl_cafile=CA)))
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"] is not None
    assert broker_credentials(Settings()) is None


def test_registry_client_config():
    config = registry.client_config(secured())
    assert config["basic.auth.user.info"] == f"reg:{SECRET}" and config["ssl.ca.location"] == CA
    registry.registry_client(secured())  # the client accepts these options


def test_postgres_conninfo_password_overrides_the_url():
    info = psycopg.conninfo.conninfo_to_dict(postgres.conninfo(secured()))
    assert info == {"user": "cqrs", "password": SECRET, "dbname": "cqrs", "host": "db", "port": "5432",
                    "sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}
    assert postgres.redacted(secured()) == "db:5432/cqrs"


def test_mongo_client_options():
    assert mongo.security_options(secured()) == {"username": "reader", "password": SECRET, "tls": True,
                                                 "tlsCAFile": CA}
    options = mongo.client_options(secured(), socketTimeoutMS=5)
    assert options["socketTimeoutMS"] == 5 and options["password"] == SECRET
    client = mongo.mongo_client(secured())  # does not connect until used
    try:
        assert client.options.pool_options._credentials.username == "reader"
    finally:
        client.close()


def test_elasticsearch_basic_auth_or_api_key():
    assert elasticsearch.security_options(secured()) == {"basic_auth": ("elastic", SECRET), "ca_certs": CA}
    keyed = Settings(elasticsearch_api_key=SECRET)
    assert elasticsearch.security_options(keyed) == {"api_key": SECRET}
    elasticsearch.es_client(secured()).close()


def test_redis_options_url_and_clients():
    s = secured()
    assert redis.security_options(s) == {"username": "cqrs", "password": SECRET, "ssl_ca_certs": CA}
    assert redis._url(s) == "rediss://cache:6379/2"  # TLS, and the URL's password does not win
    for make in (redis.redis_client, redis.async_redis_client):
        kwargs = make(s).connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["ssl_ca_certs"], kwargs["db"]) == (
            "cqrs", SECRET, CA, 2)
        assert "SSL" in make(s).connection_pool.connection_class.__name__


# ---- secrets from files ------------------------------------------------------------------------

def write_secrets(directory: Path, **values: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    return directory


def test_secrets_are_read_from_files(tmp_path, monkeypatch):
    d = write_secrets(tmp_path / "s", redis_username="cqrs", redis_password=SECRET, write_db_password="pg")
    monkeypatch.setenv("CQRS_SECRETS_DIR", str(d))
    s = Settings()
    assert (s.redis_username, s.redis_password.get_secret_value(), s.write_db_password.get_secret_value()) == (
        "cqrs", SECRET, "pg")
    from app.settings import get_settings
    get_settings.cache_clear()
    try:
        assert get_settings().redis_password.get_secret_value() == SECRET
    finally:
        get_settings.cache_clear()


def test_environment_wins_over_files(tmp_path, monkeypatch):
    d = write_secrets(tmp_path / "s", redis_password="from-file")
    monkeypatch.setenv("REDIS_PASSWORD", "from-env")
    assert Settings(_secrets_dir=d).redis_password.get_secret_value() == "from-env"


def test_default_secrets_dir_is_the_local_stacks(tmp_path, monkeypatch):
    monkeypatch.delenv("CQRS_SECRETS_DIR")
    monkeypatch.setenv("CQRS_STATE_DIR", str(tmp_path / "state"))
    assert secrets_dir() is None  # not generated yet: nothing to read
    write_secrets(tmp_path / "state" / "secrets", redis_password=SECRET)
    assert secrets_dir() == tmp_path / "state" / "secrets"
    assert Settings().redis_password.get_secret_value() == SECRET


@pytest.mark.parametrize("state", [None, "/tmp/elsewhere"])
def test_state_dir_rule_matches_the_local_stack(monkeypatch, state):
    if state:
        monkeypatch.setenv("CQRS_STATE_DIR", state)
    else:
        monkeypatch.delenv("CQRS_STATE_DIR", raising=False)
    from deploy.local.credentials import secrets_dir as stack_secrets_dir
    assert local_state_dir() == StackPaths.from_env().state
    assert local_state_dir() / "secrets" == stack_secrets_dir(StackPaths.from_env())


def test_the_stack_generates_private_secrets_once(tmp_path, monkeypatch):
    from deploy.local.credentials import ensure_secrets

    paths = StackPaths(cache=tmp_path / "cache", state=tmp_path / "state", user=None)
    first = ensure_secrets(paths)
    assert set(first) == {"redis_username", "redis_password", "write_db_password", "auth_jwt_secret"}
    assert len(first["auth_jwt_secret"]) >= 43 and first["redis_username"] == "cqrs"
    assert ensure_secrets(paths) == first
    directory = tmp_path / "state" / "secrets"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {0o600}
    monkeypatch.setenv("CQRS_SECRETS_DIR", str(directory))
    s = Settings()
    assert s.redis_password.get_secret_value() == first["redis_password"]
    assert s.write_db_password.get_secret_value() == first["write_db_password"]


def test_an_empty_secret_left_by_a_crash_is_generated_again(tmp_path):
    """A process that died between creating a secret's file and writing it left it empty; the next start
    fills it (written aside, then linked into place) instead of authenticating with an empty password."""
    from deploy.local.credentials import ensure_secrets

    paths = StackPaths(cache=tmp_path / "cache", state=tmp_path / "state", user=None)
    directory = tmp_path / "state" / "secrets"
    directory.mkdir(parents=True)
    (directory / "redis_password").write_text("")
    made = ensure_secrets(paths)
    assert len(made["redis_password"]) >= 43
    assert (directory / "redis_password").read_text().strip() == made["redis_password"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(made)  # no temporary file left behind


def test_redis_config_holds_only_the_password_digest(tmp_path):
    from deploy.local.services.redis import Redis

    config = Redis()._config(tmp_path, "cqrs", SECRET)
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert f"user default on #{digest} " in config and f"user cqrs on #{digest} " in config  # no anonymous user
    assert "nopass" not in config and SECRET not in config


# ---- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
     "needs KAFKA_SASL_MECHANISM"),
    ({"kafka_sasl_username": "u"}, "does not use SASL"),
    ({"kafka_ssl_cafile": CA}, "does not use TLS"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k"}, "without KAFKA_SSL_CERTFILE"),
    ({"schema_registry_username": "u"}, "SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD"),
    ({"mongo_password": "p"}, "MONGO_PASSWORD set without MONGO_USERNAME"),
    ({"elasticsearch_api_key": "k", "elasticsearch_username": "u", "elasticsearch_password": "p"},
     "either ELASTICSEARCH_API_KEY or"),
    ({"elasticsearch_username": "u"}, "ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD"),
    ({"redis_username": "u"}, "REDIS_USERNAME set without REDIS_PASSWORD"),
    ({"redis_ca_file": CA}, "REDIS_TLS is false"),
])
def test_inconsistent_settings_are_refused_in_one_line(values, message):
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    (error,) = caught.value.errors()
    assert message in error["msg"] and "\n" not in error["msg"]


def test_mechanism_outside_the_list_is_refused():
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI", kafka_sasl_username="u",
                 kafka_sasl_password="p")


# ---- no secret in a repr, str or error ----------------------------------------------------------

def test_no_secret_in_the_repr_of_settings():
    s = secured(mongo_url="mongodb://u:inmongo@m1,m2/db")
    for shown in (repr(s), str(s)):
        assert SECRET not in shown and "inurl" not in shown and "inmongo" not in shown and "old@" not in shown
    assert "redis://:***@cache:6379/2" in repr(s)


def test_redacted_urls():
    assert redact_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("mongodb://u:p%2F@a,b/db?tls=true") == "mongodb://u:***@a,b/db?tls=true"
    assert redact_url("http://es:9200") == "http://es:9200"
    s = secured(mongo_url="mongodb://u:inmongo@m1/db")
    assert "inmongo" not in mongo.address(s) and "inurl" not in redis.address(s)


def test_unreachable_errors_name_no_secret():
    s = secured(connect_timeout_s=1).model_copy(update={
        "redis_url": "redis://:inurl@127.0.0.1:9/0", "redis_tls": False, "redis_ca_file": None,
        "write_db_url": "postgresql://cqrs:old@127.0.0.1:9/cqrs", "write_db_sslmode": "disable"})
    from connectors import ServiceUnavailable
    for check in (redis.check, postgres.check):
        with pytest.raises(ServiceUnavailable) as caught:
            check(s)
        assert SECRET not in str(caught.value) and "inurl" not in str(caught.value) and "old" not in str(
            caught.value)
