"""Who may call what: operators (`RECO_ADMIN_TOKEN`) the admin routes, clients (`RECO_API_KEY`) the other /v1 routes.

A guarded route belongs to a router made by `admin_router()` or `client_router()`. Their route class checks the
bearer token before anything else runs for the request: before its body is read or validated, before the
service's readiness is asked, before any handler code. A route added to one of these routers is guarded
without anyone remembering to call a check; `tests/service/test_auth.py` walks the app's routes and requires
every admin, write and client route to refuse a missing token.

Tokens are compared in constant time. Without a token configured (dev mode; for clients, also
`RECO_ALLOW_ANONYMOUS` behind a gateway) the routes are open: `Settings` refuses to start otherwise.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import SecretStr

from service.api.schemas import ErrorResponse
from service.core.errors import Forbidden, Unauthorized
from service.core.settings import Settings


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip() or None


def _matches(given: str, accepted: list[SecretStr]) -> bool:
    ok = False
    for secret in accepted:  # every one compared, in constant time each
        ok |= hmac.compare_digest(given.encode(), secret.get_secret_value().encode())
    return ok


def admin_tokens(settings: Settings) -> list[SecretStr] | None:
    """The tokens an admin route accepts; None: open (dev mode without a token)."""
    return [settings.admin_token] if settings.admin_token is not None else None


def client_tokens(settings: Settings) -> list[SecretStr] | None:
    """The tokens a client route accepts (the API key, and the admin token); None: open."""
    if settings.api_key is None:
        return None
    return [settings.api_key] + ([settings.admin_token] if settings.admin_token is not None else [])


def authorize(authorization: str | None, accepted: list[SecretStr] | None, what: str) -> None:
    """401 without a bearer token, 403 with a wrong one; nothing when `accepted` is None (open)."""
    if accepted is None:
        return
    given = bearer(authorization)
    if given is None:
        raise Unauthorized(f"header.authorization: 'Bearer <{what}>' is required")
    if not _matches(given, accepted):
        raise Forbidden(f"header.authorization: the {what} is not valid")


def is_authorized(authorization: str | None, settings: Settings) -> bool:
    """Whether a client route would let this header through (for the recommendations fast path, which answers
    only authorized requests itself and hands the others to the router, which words the refusal)."""
    accepted = client_tokens(settings)
    if accepted is None:
        return True
    given = bearer(authorization)
    return given is not None and _matches(given, accepted)


def _guarded(tokens: Callable[[Settings], list[SecretStr] | None], what: str) -> type[APIRoute]:
    class GuardedRoute(APIRoute):
        guard = what

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                authorize(request.headers.get("authorization"), tokens(request.app.state.settings), what)
                return await handler(request)

            return checked

    return GuardedRoute


AdminRoute = _guarded(admin_tokens, "admin token")
ClientRoute = _guarded(client_tokens, "API key")

ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "No admin token (Authorization: Bearer <token>)."},
    403: {"model": ErrorResponse, "description": "Wrong admin token."},
}
CLIENT_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "No API key (Authorization: Bearer <key>), when one is set."},
    403: {"model": ErrorResponse, "description": "Wrong API key."},
}


def admin_router() -> APIRouter:
    return APIRouter(route_class=AdminRoute, responses=ADMIN_ERRORS)


def client_router() -> APIRouter:
    return APIRouter(route_class=ClientRoute, responses=CLIENT_ERRORS)
