"""Both APIs fuzzed from the OpenAPI documents they serve (schemathesis), against the running processes,
as an admin and as a customer: no answer is a 5xx, every answer (status, headers, body) conforms to the
document, a protected operation refuses a request without its token, and a refused command leaves the
write model exactly as it was (nothing half-written)."""
from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from schemathesis import GenerationMode, checks

from app.operations import processes
from app.settings import Settings
from tests.e2e.conftest import (Gateway, create_customer, create_product, customer_token, gateway_spawner,
                                make_client)

EXAMPLES = 15
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.ignored_auth]
# Fuzzing sends hundreds of requests a second from two callers: the limits are the shop's, not one caller's.
FUZZ_ENV = {"RATE_LIMIT_PER_S": "100000", "RATE_LIMIT_BURST": "100000", "OUTBOX_RELAY_ENABLED": "false"}
FUZZ = hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed_gateway(setup_done: None, gateway_logs) -> Iterator[Gateway]:
    with gateway_spawner(gateway_logs) as spawn:
        gateway = spawn("fuzz", **FUZZ_ENV)
        gateway.wait_ready(leader=None)
        yield gateway


@pytest.fixture(scope="module")
def fuzzed_query_api(spawn_query_api) -> processes.AppProcess:
    return spawn_query_api("fuzz", **FUZZ_ENV)


@pytest.fixture(scope="module")
def callers(fuzzed_gateway: Gateway, settings: Settings, token: str) -> dict[str, str]:
    """An admin, and a customer with a product to order."""
    with make_client(fuzzed_gateway.url, token) as admin:
        customer = create_customer(admin, name="Fuzzed Customer")
        create_product(admin, stock=1_000_000)
    return {"admin": token, "customer": customer_token(settings, customer)}


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway: Gateway):
    return schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def query_schema(fuzzed_query_api: processes.AppProcess):
    return schemathesis.openapi.from_url(f"{fuzzed_query_api.base_url}/openapi.json")


WRITE_MODEL = """select (select coalesce(max(id), 0) from outbox),
    (select count(*) || ':' || coalesce(sum(version), 0) from customers),
    (select count(*) || ':' || coalesce(sum(version), 0) from products),
    (select count(*) || ':' || coalesce(sum(version), 0) from orders),
    (select count(*) || ':' || coalesce(sum(quantity), 0) from order_items),
    (select coalesce(sum(available), 0) from stock)"""


def write_model(db: psycopg.Connection) -> tuple:
    return db.execute(WRITE_MODEL).fetchone()


def fuzz(schema, send) -> list[str]:
    """Every operation of `schema`, EXAMPLES generated requests each, valid and invalid ones; `send(case)`
    calls and validates. Schemathesis' own pytest loader needs pytest internals that pytest 9 dropped, so
    the cases are drawn from its public strategies with Hypothesis directly."""
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))
        FUZZ(given(case=strategy)(lambda case: send(case)))()
        tried.append(operation.label)
    return tried


def test_gateway_conforms_and_refusals_write_nothing(gateway_schema, callers: dict[str, str],
                                                      fuzzed_gateway: Gateway, db: psycopg.Connection):
    """Each generated request is sent as an admin and as a customer."""
    def send(case) -> None:
        for caller, token in callers.items():
            before = write_model(db)
            response = case.call_and_validate(base_url=fuzzed_gateway.url, checks=CHECKS,
                                              headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 400:
                assert write_model(db) == before, f"{case.method} {case.formatted_path} as {caller} answered " \
                                                  f"{response.status_code} but changed the write model"

    assert len(fuzz(gateway_schema, send)) == 10


def test_query_api_conforms(query_schema, callers: dict[str, str], fuzzed_query_api: processes.AppProcess):
    def send(case) -> None:
        for token in callers.values():
            case.call_and_validate(base_url=fuzzed_query_api.base_url, checks=CHECKS,
                                   headers={"Authorization": f"Bearer {token}"})

    assert len(fuzz(query_schema, send)) == 4
