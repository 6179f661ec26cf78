"""The app factory and its lifespan. Run: `python -m service` (RECO_WORKERS processes), or one process with
`uvicorn --factory service.api.app:create_app`."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType, SimpleNamespace
from typing import Any, ClassVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import admin, events, experiments, health, items, recommendations, ui, users
from service.api.fast_path import FastPath
from service.core.errors import install_error_handlers
from service.core.logs import ACCESS, UserHasher, configure_logging, request_id_from
from service.core.metrics import Metrics
from service.core.settings import Settings
from service.experiments.design import follow
from service.experiments.guard import watch
from service.serving.state import AppState

log = logging.getLogger(__name__)
# Every route, by resource; the API's routers are also what `allowed_methods` consults (405 or 404).
API_ROUTERS = (
    health.router,
    recommendations.router,
    events.router,
    items.client,
    items.admin,
    users.router,
    admin.router,
    experiments.router,
)
UI_ROUTERS = (ui.admin, ui.pages)


class AdmissionMiddleware:
    """Turns work away before FastAPI parses anything when `max_in_flight` requests are already in progress:
    a bare 503 with Retry-After costs a fraction of a routed one, so a flood of requests that are refused
    does not starve the ones admitted. The routes' own `AppState.admit` still counts and bounds them."""

    ADMITTED: ClassVar[dict[str, str]] = {"/v1/recommendations": "/v1/recommendations", "/v1/events": "/v1/events"}
    BODY = b'{"error":"overloaded","message":"too many requests in flight; retry","detail":[]}'
    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"1"),
        (b"content-length", str(len(BODY)).encode()),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            template = self.ADMITTED.get(path)
            if template is None and path.startswith("/v1/items/") and path.endswith("/similar"):
                template = "/v1/items/{item_id}/similar"
            state: AppState | None = getattr(getattr(scope.get("app"), "state", None), "reco", None)
            if template is not None and state is not None and state.in_flight >= state.settings.max_in_flight:
                state.metrics.rejected.labels("overload").inc()
                scope["route"] = SimpleNamespace(path=template)  # for the request metrics' route label
                await send({"type": "http.response.start", "status": 503, "headers": self.HEADERS})
                await send({"type": "http.response.body", "body": self.BODY})
                return
        await self.app(scope, receive, send)


class HTTPMetricsMiddleware:
    """Per request: the count and latency by route *template* (never the raw path, which may carry ids), the
    request id (the caller's X-Request-ID or a new one; echoed in the response header and in
    `scope["state"]["request_id"]` for the route), and one JSON access record with them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = request_id_from(header)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            seconds = time.perf_counter() - start
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_latency.labels(template, method, str(status)).observe(seconds)
            if ACCESS.isEnabledFor(logging.INFO):
                extra = {
                    "request_id": request_id,
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                }
                user = scope["state"].get("user_hash")
                if user:
                    extra["user"] = user
                ACCESS.info("request", extra=extra)


def drain_on_sigterm(state: AppState, delay_s: float) -> None:
    """On SIGTERM: readiness off at once (503, so load balancers stop sending), keep serving for `delay_s`, then
    hand the signal to the server's own handler (uvicorn: stop accepting, finish in-flight requests, run the
    lifespan shutdown). Only where the server handles signals (the main thread of a `uvicorn` process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        state.draining = True  # /readyz answers 503; requests are still served
        state.metrics.ready.set(0)
        log.info("SIGTERM: not ready; draining for %.1f s, then finishing in-flight requests", delay_s)
        loop.call_soon_threadsafe(loop.call_later, delay_s, server_handler, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def deployment_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI schema with this deployment's bounds (max k, list sizes) in it, so a request the schema
    allows is one the service accepts."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        models = schema["components"]["schemas"]
        models["RecommendationRequest"]["properties"]["k"]["maximum"] = settings.max_k
        models["RecommendationRequest"]["properties"]["exclude_item_ids"]["maxItems"] = settings.max_exclusions
        models["EventBatch"]["properties"]["events"]["maxItems"] = settings.max_events_per_request
        for parameter in schema["paths"]["/v1/items/{item_id}/similar"]["get"]["parameters"]:
            if parameter["name"] == "k":
                parameter["schema"]["maximum"] = settings.max_k
        app.openapi_schema = schema
    return app.openapi_schema


def allowed_methods(path: str) -> set[str]:
    """The methods the service's routes serve on `path` (every route of every router whose path matches)."""
    methods: set[str] = set()
    for routes in API_ROUTERS:
        for route in routes.routes:
            if isinstance(route, APIRoute) and route.methods and route.path_regex.match(path):
                methods |= route.methods
    return methods


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dead = metrics.forget_dead_processes()
        if dead:
            log.warning("dropped the live metrics of worker processes that died: %s", dead)
        state = await AppState.open(settings, metrics)
        app.state.reco = state
        drain_on_sigterm(state, settings.shutdown_delay_s)
        followers = [asyncio.create_task(state.follow_live_items()), asyncio.create_task(state.follow_deletions())]
        experiments = follow(state.experiments, state.records, settings.experiments_sync_s, state.prepare_experiment)
        followers.append(asyncio.create_task(experiments))
        if settings.impressions:
            served = lambda: state.bundle.version  # noqa: E731
            guarded = watch(state.records, metrics, served, min_lists=settings.guard_min_lists)
            followers.append(asyncio.create_task(guarded))
        if settings.bundle_sync_s > 0:
            followers.append(asyncio.create_task(state.follow_published_bundle()))
        try:
            yield
        finally:
            for follower in followers:
                follower.cancel()
            await state.close()

    app = FastAPI(
        title="reco-service",
        version="0.1.0",
        summary="Two-stage recommendations: two-tower retrieval (FAISS) and an ONNX ranker.",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,  # beyond it FastAPI answers 413 (plain text), chunked bodies too
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.openapi = lambda: deployment_openapi(app, settings)  # type: ignore[method-assign]
    for routes in API_ROUTERS + UI_ROUTERS:
        app.include_router(routes)
    app.mount("/ui/static", ui.static_files(), name="ui-static")
    install_error_handlers(app, allowed_methods)
    app.add_middleware(FastPath, max_body_bytes=settings.max_body_bytes, enabled=settings.http_fast_path)
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)  # outermost: it also counts the refusals
    app.state.user_hash = UserHasher(settings.log_user_key)
    configure_logging(settings.log_format, settings.log_level)
    logging.getLogger("reco.access").setLevel(logging.INFO if settings.access_log else logging.WARNING)
    return app
