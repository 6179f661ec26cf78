"""Domain errors and their HTTP mapping, in one place.

    ServiceError              base of the errors the API turns into responses
    ├── InvalidField          422: a request field is out of bounds (checks that depend on settings)
    ├── Unauthorized          401: an admin endpoint without the admin token
    ├── Forbidden             403: an admin endpoint with a wrong admin token
    ├── NotFound              404: e.g. an item id the bundle does not know
    ├── Conflict              409: e.g. an item id already taken by other content
    ├── Unavailable           503: a backend the request needs (the database) failed; retry
    ├── (404, 405)            the framework's refusals (no such route, method), same body shape
    ├── Overloaded            503: too many requests in flight, or the request's deadline passed; retry
    └── NotReady              503: the service is starting or stopping

FastAPI's request validation errors are re-shaped to the same body: `error`, a `message` that names the
field(s), and `detail` with pydantic's locations. Anything unexpected is a 500 with a generic message,
logged and counted in `reco_errors_total{type=...}`, never a stack trace in the response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 500
    error = "internal_error"

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or []


class InvalidField(ServiceError):
    status_code = 422
    error = "invalid_request"

    def __init__(self, location: tuple[str, ...], message: str) -> None:
        field = ".".join(location)
        super().__init__(f"{field}: {message}", [{"loc": list(location), "msg": message, "type": "value_error"}])


class Unauthorized(ServiceError):
    status_code = 401
    error = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    error = "forbidden"


class Conflict(ServiceError):
    status_code = 409
    error = "conflict"


class NotFound(ServiceError):
    status_code = 404
    error = "not_found"


class Unavailable(ServiceError):
    status_code = 503
    error = "unavailable"


class Overloaded(ServiceError):
    status_code = 503
    error = "overloaded"


class NotReady(ServiceError):
    status_code = 503
    error = "not_ready"


def _body(error: str, message: str, detail: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": error, "message": message, "detail": detail}


def _count(request: Request, error_type: str) -> None:
    state = getattr(request.app.state, "reco", None)
    if state is not None:
        state.metrics.errors.labels(error_type).inc()


def install_error_handlers(app: FastAPI, allowed_methods: Callable[[str], set[str]] | None = None) -> None:
    """`allowed_methods(path)`: every method the app serves on `path`, for a 405's `Allow` (Starlette's router
    names only the first route whose path matched, when one path has routes for several methods)."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail) or "invalid request"
        _count(request, "validation")
        return JSONResponse(_body("invalid_request", message, detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own refusals (404 no such route, 405) in the same shape.
        names = {404: "not_found", 405: "method_not_allowed"}
        error = names.get(exc.status_code, "http_error")
        message = str(exc.detail)
        _count(request, error)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and allowed_methods is not None:
            methods = allowed_methods(request.url.path)
            if methods:
                headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse(_body(error, message, []), status_code=exc.status_code, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        _count(request, exc.error)
        status, body, headers = service_error_response(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        _count(request, type(exc).__name__)
        status, body = unexpected_error_response(request.scope, exc)
        return JSONResponse(body, status_code=status)


def service_error_response(exc: ServiceError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """(status, body, headers) of a ServiceError: 503s say when to retry."""
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return exc.status_code, _body(exc.error, exc.message, exc.detail), headers


def unexpected_error_response(scope: Any, exc: Exception) -> tuple[int, dict[str, Any]]:
    """Logs the error with its traceback; the response says nothing of it."""
    route = getattr(scope.get("route"), "path", "unmatched")  # the template: a raw path may carry ids
    log.error("unhandled error on %s %s", scope.get("method"), route, exc_info=exc)
    return 500, _body("internal_error", "internal error", [])
