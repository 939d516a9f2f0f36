"""Domain errors to HTTP: the one table, and the one way an error becomes a response."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from corral.errors import (
    ApiError,
    BadRequest,
    Conflict,
    CorralError,
    Forbidden,
    Gone,
    Invalid,
    NotConfigured,
    NotFound,
    TooLarge,
    Unauthorized,
    VersionSkew,
)

STATUS: dict[type[CorralError], int] = {
    BadRequest: 400,
    Invalid: 400,
    VersionSkew: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Gone: 404,
    Conflict: 409,
    TooLarge: 413,
    NotConfigured: 500,
    # An ApiError of no finer class: an error Sourcegraph's handler answers with 500 (its wrapHandler
    # makes every handler error a 500), e.g. a refused executor version at dequeue.
    ApiError: 500,
}
DEFAULT_STATUS = 500  # any other CorralError: the server's own fault


def status_for(exc: CorralError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return DEFAULT_STATUS


def error_response(exc: CorralError) -> JSONResponse:
    """{"error": message}, plus the stored `offset` of a log offset Conflict and an ApiError's extras."""
    body: dict[str, Any] = {"error": exc.message}
    if isinstance(exc, Conflict) and exc.offset is not None:
        body["offset"] = exc.offset
    if isinstance(exc, ApiError):
        body.update(exc.extra)
    return JSONResponse(body, status_code=status_for(exc))
