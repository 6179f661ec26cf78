"""The app factory and its lifespan. Run: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import router
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.settings import Settings
from service.state import AppState


class HTTPMetricsMiddleware:
    """Counts requests and observes latency by route *template* (never the raw path, which may carry ids)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_latency.labels(template, method, str(status)).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await AppState.open(settings, metrics)
        app.state.reco = state
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="reco-service",
        version="0.1.0",
        summary="Two-stage recommendations: two-tower retrieval (FAISS) and an ONNX ranker.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it narrates its AVX-variant probing at INFO
    return app
