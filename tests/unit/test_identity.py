"""Bearer token verification (app/http/identity.py) with PyJWT: HS256 from a secret, RS256 from a JWKS
document served over real HTTP on loopback, and every way a token can be wrong."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.http.identity import TokenVerifier, Unauthenticated, issue_token
from app.settings import Settings
from domain.access import Role

SECRET = "s" * 40
LOCAL = Settings(auth_jwt_secret=SECRET, auth_jwks_url=None)


def verify(settings: Settings, token: str):
    return asyncio.run(TokenVerifier(settings).principal(token))


def claims(**override) -> dict:
    now = int(time.time())
    return {"sub": "x", "roles": ["admin"], "iss": LOCAL.auth_issuer, "aud": LOCAL.auth_audience,
            "iat": now, "exp": now + 10 * 365 * 86400, **override}  # drawn at collection time


def test_an_issued_token_round_trips_to_its_principal():
    token = issue_token(LOCAL, [Role.customer], subject="customer:ada", customer_id="ada")
    principal = verify(LOCAL, token)
    assert (principal.subject, principal.roles, principal.customer_id) == \
        ("customer:ada", frozenset({Role.customer}), "ada")


@pytest.mark.parametrize("token, reason", [
    (jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"), "has expired"),
    (jwt.encode(claims(), "t" * 40, algorithm="HS256"), "signature does not verify"),
    (jwt.encode(claims(), None, algorithm="none"), "not valid"),
    (jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"), "not valid"),
    (jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256"), "not valid"),
    (jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"), "not valid"),
    (jwt.encode(claims(roles="admin"), SECRET, algorithm="HS256"), "must be a list"),
    (jwt.encode(claims(roles=["customer"]), SECRET, algorithm="HS256"), "customer_id"),
    ("not.a.token", "not valid"),
    ("x" * 9000, "too long"),
])
def test_a_wrong_token_is_refused_with_its_reason(token: str, reason: str):
    with pytest.raises(Unauthenticated, match=reason):
        verify(LOCAL, token)


def test_without_a_secret_or_jwks_the_services_refuse_to_start():
    with pytest.raises(RuntimeError, match="AUTH_JWT_SECRET"):
        TokenVerifier(Settings(auth_jwt_secret=None, auth_jwks_url=None))


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        Settings(auth_jwt_secret="short")


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    """An identity provider's JWKS document, served over HTTP on loopback."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    document = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", key
    server.shutdown()


def test_production_tokens_are_verified_with_the_providers_keys(provider):
    url, key = provider
    settings = Settings(auth_jwt_secret=None, auth_jwks_url=url)
    token = jwt.encode(claims(roles=["operator"]), key, algorithm="RS256", headers={"kid": "k1"})
    assert verify(settings, token).roles == frozenset({Role.operator})


def test_with_a_provider_an_hs256_token_is_refused_even_signed_with_its_public_key(provider):
    url, key = provider
    settings = Settings(auth_jwt_secret=None, auth_jwks_url=url)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verify(settings, jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "k1"}))
    with pytest.raises(Unauthenticated):
        verify(settings, jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k1"}))
    with pytest.raises(RuntimeError, match="identity provider issues them"):
        issue_token(settings, [Role.admin], subject="x")


def test_an_unreachable_provider_is_a_401_not_a_hang():
    settings = Settings(auth_jwt_secret=None, auth_jwks_url="http://127.0.0.1:9/jwks.json", connect_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(Unauthenticated, match="keys cannot be fetched"):
        verify(settings, jwt.encode(claims(), "k" * 40, algorithm="HS256", headers={"kid": "k1"}))
    assert time.monotonic() - started < 5


def test_a_remembered_token_is_refused_once_it_expires():
    settings = LOCAL.model_copy(update={"auth_leeway_s": 0.0})
    verifier = TokenVerifier(settings)
    token = issue_token(settings, [Role.admin], subject="admin:short", now=time.time() - 3598.5)  # 1.5 s left
    assert asyncio.run(verifier.principal(token)).subject == "admin:short"
    assert token in verifier.verified
    time.sleep(2.0)
    with pytest.raises(Unauthenticated, match="has expired"):
        asyncio.run(verifier.principal(token))


def test_remembering_a_token_never_lets_another_through():
    verifier = TokenVerifier(LOCAL)
    good = issue_token(LOCAL, [Role.admin], subject="admin:a")
    asyncio.run(verifier.principal(good))
    head, payload, signature = good.split(".")
    forged = jwt.encode({**jwt.decode(good, options={"verify_signature": False}), "sub": "admin:b"}, "t" * 40,
                        algorithm="HS256")
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        asyncio.run(verifier.principal(forged))
    with pytest.raises(Unauthenticated):
        asyncio.run(verifier.principal(f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"))


def test_the_remembered_tokens_are_bounded(monkeypatch):
    monkeypatch.setattr("app.http.identity.VERIFIED_CACHE_SIZE", 5)
    verifier = TokenVerifier(LOCAL)
    tokens = [issue_token(LOCAL, [Role.admin], subject=f"admin:{i}") for i in range(8)]
    for token in tokens:
        asyncio.run(verifier.principal(token))
    assert list(verifier.verified) == tokens[-5:]
