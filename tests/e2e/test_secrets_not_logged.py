"""No secret reaches a log: the gateway, the query API and a worker run at `info` with the local stack's
secrets (the Redis ACL password, the PostgreSQL password, the token signing key) and tokens in use,
through successes and failures (bad tokens, a wrong database password), and none of those values
appears in their output or in an answer."""
from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import jwt

from app.operations import processes
from app.settings import Settings
from tests.e2e.conftest import create_customer, create_order, create_product, customer_token, make_client

READY_TIMEOUT_S = 90.0


def configured_secrets(settings: Settings) -> dict[str, str]:
    found = {name: getattr(settings, name) for name in ("redis_password", "write_db_password", "auth_jwt_secret")}
    values = {name: value.get_secret_value() for name, value in found.items() if value is not None}
    assert set(values) == set(found), f"the local stack should configure {sorted(found)}; it has {sorted(values)}"
    return values


def test_no_secret_in_any_log_or_answer(setup_done: None, settings: Settings, token: str, tmp_path: Path):
    known = configured_secrets(settings)
    wrong_db_password = secrets.token_urlsafe(24)
    started: list[processes.AppProcess] = []
    answers: list[str] = []
    try:
        gateway = processes.start("gateway", ["gateway", "--log-level", "info"], log_dir=tmp_path,
                                  port=processes.free_port(), env={"OUTBOX_RELAY_ENABLED": "true"},
                                  timeout=READY_TIMEOUT_S)
        query = processes.start("query-api", ["query-api", "--log-level", "info"], log_dir=tmp_path,
                                port=processes.free_port(), timeout=READY_TIMEOUT_S)
        worker = processes.start("worker", ["worker", "order-views", "--log-level", "info"], log_dir=tmp_path,
                                 env={"PROJECTION_GROUP_SUFFIX": f"-secrets-{secrets.token_hex(3)}"},
                                 ready_path=None)
        locked_out = processes.start("query-api-wrong-password", ["query-api", "--log-level", "info"],
                                     log_dir=tmp_path, port=processes.free_port(), ready_path="/healthz",
                                     env={"WRITE_DB_PASSWORD": wrong_db_password}, timeout=READY_TIMEOUT_S)
        started += [gateway, query, worker, locked_out]
        with make_client(gateway.base_url, token) as admin:
            customer = create_customer(admin)
            order = create_order(admin, customer, [(create_product(admin), 1)])["order_id"]
        forged = jwt.encode({"sub": "x", "roles": ["admin"]}, "f" * 40, algorithm="HS256")
        own = customer_token(settings, customer)
        known["customer token"], known["admin token"], known["wrong db password"] = own, token, wrong_db_password
        with make_client(query.base_url, own) as reader, make_client(query.base_url, forged) as forger, \
                make_client(locked_out.base_url, token) as stranded:
            answers += [reader.get(f"/api/orders/{order}").text, forger.get(f"/api/orders/{order}").text,
                        stranded.get("/readyz").text, stranded.get(f"/api/orders/{order}").text]
        assert "postgresql" in answers[2], answers[2]  # the wrong password is reported, without the password
        assert httpx.get(f"{query.base_url}/api/orders/{order}", headers={"Authorization": "Bearer x.y.z"}
                         ).status_code == 401
    finally:
        for app in started:
            app.stop()
    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    assert len(logs) == 4 and all(logs.values()), {name: len(text) for name, text in logs.items()}
    leaks = [f"{what} in {where}" for what, value in known.items()
             for where, text in [*logs.items(), *(("an answer", a) for a in answers)] if value in text]
    assert leaks == []
