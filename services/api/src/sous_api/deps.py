"""FastAPI dependencies and the one way routes touch the database.

Routes are ``async`` and run each piece of database work in a worker thread with its
own session, closed before the thread is given back. A session that outlived its
thread (a ``yield`` dependency closed after the response) would hold a pooled
connection while its request waits for another thread, and with every thread waiting
for a connection the API would deadlock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sous_api.auth_cache import PrincipalCache
from sous_api.errors import ApiError
from sous_api.rate_limit import RateLimiter
from sous_core import apikeys
from sous_core.apikeys import Principal
from sous_core.db.engine import session_factory

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: The API-key scheme as the OpenAPI document states it (``securitySchemes``); the header
#: itself is read and checked by :func:`get_principal`, which answers in the API's errors.
BEARER_SCHEME = HTTPBearer(
    scheme_name="apiKey",
    bearerFormat="sous_...",
    description="An API key from `sous keys create --tenant NAME`.",
    auto_error=False,
)

T = TypeVar("T")


async def run_db(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(session, *args, **kwargs)`` in a worker thread, with a session of its own.

    ``fn`` commits what it writes; whatever it leaves open is rolled back.
    """

    def call() -> T:
        with session_factory()() as session:
            return fn(session, *args, **kwargs)

    return await run_in_threadpool(call)


def _authenticate(session: Session, token: str) -> Principal | None:
    return apikeys.authenticate(session, token)


async def get_principal(
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)],
) -> Principal:
    """The key's tenant, once the key is checked and the tenant is within its rate limit."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(
            401,
            "unauthorized",
            "Missing 'Authorization: Bearer <API key>' header.",
            headers=BEARER_CHALLENGE,
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "The Authorization header must be 'Bearer <API key>'.",
            headers=BEARER_CHALLENGE,
        )
    token = token.strip()
    cache: PrincipalCache | None = getattr(request.app.state, "principal_cache", None)
    principal = cache.get(token) if cache is not None else None
    if principal is None:
        principal = await run_db(_authenticate, token)
        if principal is not None and cache is not None:
            cache.put(token, principal)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "The API key is unknown, revoked or expired.",
            headers=BEARER_CHALLENGE,
        )
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        decision = await limiter.check(principal.tenant_id)
        if not decision.allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"Too many requests: this tenant may make {limiter.per_second:g} per second "
                f"(bursts of {limiter.burst}); retry in {decision.retry_after} s.",
                headers={"Retry-After": str(decision.retry_after)},
            )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_celery(request: Request) -> Celery:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, where it would
    # cost a thread hop per request and take a token from the database threads.
    return request.app.state.celery


CeleryDep = Annotated[Celery, Depends(get_celery)]
