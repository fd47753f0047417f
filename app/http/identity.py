"""Bearer tokens: verified with PyJWT, turned into a `Principal` (domain/access.py).

Locally tokens are HS256, signed with AUTH_JWT_SECRET (`cqrs token issue`); in production they come from
an identity provider and are verified with the keys of its JWKS document (AUTH_JWKS_URL; RS256/ES256).
The accepted algorithms are fixed by that choice, never by the token, so `alg: none` or an HS256 token
signed with the public key is refused. Every token must carry `sub`, `exp`, `iss` and `aud`. Any
failure is 401 with the reason; a valid token without the right role or ownership is 403 (elsewhere).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.http.errors import error_body
from app.settings import Settings
from domain.access import Principal, Role, principal_from_claims, require_role

ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
MAX_TOKEN_CHARS = 8192
JWKS_CACHE_S = 300
MAX_TTL_S = 30 * 24 * 3600
VERIFIED_CACHE_S = 60.0     # how long a verified token is taken without checking its signature again
VERIFIED_CACHE_SIZE = 10_000


class Unauthenticated(Exception):
    """No usable token: the one-line reason is the 401's message."""


class TokenVerifier:
    """Checks signature, expiry, issuer and audience; the JWKS keys are cached (PyJWKClient, bounded by
    JWKS_CACHE_S) and fetched in a worker thread so a slow provider never blocks the event loop.

    A token that verified is remembered (at most VERIFIED_CACHE_SIZE, each for VERIFIED_CACHE_S and never
    past its expiry): a client sends the same token with every request, and checking its signature each
    time was a measurable share of a request's CPU. A key the provider withdraws therefore stops being
    accepted within JWKS_CACHE_S + VERIFIED_CACHE_S; tokens that fail are never remembered."""

    def __init__(self, settings: Settings) -> None:
        if settings.auth_jwks_url:
            self.algorithms = ASYMMETRIC
            self.jwks: jwt.PyJWKClient | None = jwt.PyJWKClient(
                settings.auth_jwks_url, cache_keys=True, lifespan=JWKS_CACHE_S, timeout=settings.connect_timeout_s)
            self.secret: str | None = None
        elif settings.auth_jwt_secret is not None:
            self.algorithms, self.jwks = ["HS256"], None
            self.secret = settings.auth_jwt_secret.get_secret_value()
        else:
            raise RuntimeError("no way to verify bearer tokens: set AUTH_JWT_SECRET (or the file auth_jwt_secret "
                               "in CQRS_SECRETS_DIR) or AUTH_JWKS_URL")
        self.issuer, self.audience = settings.auth_issuer, settings.auth_audience
        self.roles_claim, self.leeway = settings.auth_roles_claim, settings.auth_leeway_s
        self.verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()  # token -> (who, good until)

    async def principal(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("the bearer token is too long")
        now = time.time()
        known = self.verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self.verified[token]
        who, expires = await self._verify(token)
        self.verified[token] = (who, min(expires + self.leeway, now + VERIFIED_CACHE_S))
        if len(self.verified) > VERIFIED_CACHE_SIZE:
            self.verified.popitem(last=False)
        return who

    async def _verify(self, token: str) -> tuple[Principal, float]:
        """The token's principal and expiry (epoch seconds), or Unauthenticated with the reason."""
        try:
            key: Any = self.secret
            if self.jwks is not None:
                key = (await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)).key
            claims = jwt.decode(token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the bearer token's signature does not verify") from None
        except jwt.PyJWKClientConnectionError:
            raise Unauthenticated("the identity provider's keys cannot be fetched") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
        roles = claims.get(self.roles_claim) or []
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated(f"the bearer token's {self.roles_claim} claim must be a list of names")
        customer_id = claims.get("customer_id")
        try:
            return principal_from_claims(str(claims["sub"]), roles,
                                         customer_id if isinstance(customer_id, str) else None), float(claims["exp"])
        except ValueError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}") from None


def issue_token(settings: Settings, roles: Iterable[Role], *, subject: str, customer_id: str | None = None,
                ttl_s: float = 3600, now: float | None = None) -> str:
    """An HS256 token for local use (demo, tests, benchmarks); production tokens come from the provider."""
    if settings.auth_jwt_secret is None or settings.auth_jwks_url:
        raise RuntimeError("tokens are issued here only with AUTH_JWT_SECRET set; with AUTH_JWKS_URL the "
                           "identity provider issues them")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL_S // 86400} days")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": subject, settings.auth_roles_claim: [Role(r).value for r in roles],
                              "iss": settings.auth_issuer, "aud": settings.auth_audience, "iat": issued,
                              "exp": issued + int(ttl_s), "jti": uuid.uuid4().hex}
    if customer_id is not None:
        claims["customer_id"] = customer_id
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


def unauthenticated(message: str) -> HTTPException:
    return HTTPException(401, detail=error_body("unauthorized", message, "Authorization"),
                         headers={"WWW-Authenticate": "Bearer"})


BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description=(
    "A JWT: `cqrs token issue` locally, the identity provider in production."))


async def presented(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
                    ) -> Principal | None:
    """The caller of a bearer token, if one was sent; a token that was sent must be valid (401), even where
    none is needed."""
    if credentials is None:
        return None
    try:
        return await request.app.state.verifier.principal(credentials.credentials)
    except Unauthenticated as exc:
        raise unauthenticated(str(exc)) from None


MaybeCaller = Annotated[Principal | None, Depends(presented)]


async def authenticated(principal: MaybeCaller) -> Principal:
    """The caller, from a valid bearer token; 401 without one."""
    if principal is None:
        raise unauthenticated("a bearer token is required")
    return principal


Caller = Annotated[Principal, Depends(authenticated)]


def requires(*roles: Role):
    """A dependency admitting callers with one of `roles` (403 otherwise)."""
    async def check(principal: Caller) -> Principal:
        require_role(principal, *roles)
        return principal
    return check
