"""FastAPI dependencies: a database session, the calling tenant, the Celery app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from sous_api.errors import ApiError
from sous_core import apikeys
from sous_core.apikeys import Principal
from sous_core.db.engine import session_factory

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_session() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, session: SessionDep) -> Principal:
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
    principal = apikeys.authenticate(session, token.strip())
    # End the read-only transaction so the route starts its own.
    session.rollback()
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "The API key is unknown, revoked or expired.",
            headers=BEARER_CHALLENGE,
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


CeleryDep = Annotated[Celery, Depends(get_celery)]
