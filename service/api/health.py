"""Open routes: liveness (`/healthz`), readiness (`/readyz`), Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.schemas import (
    ReadinessResponse,
)
from service.serving.state import AppState
from service.store.records import RecordsUnavailable

router = APIRouter()  # open: no token


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadinessResponse, responses={503: {"model": ReadinessResponse}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the bundle is loaded and warmed up. The cache's state is reported, not required."""
    state: AppState | None = getattr(request.app.state, "reco", None)
    if state is None:
        body = ReadinessResponse(
            ready=False,
            bundle_version=None,
            onnx_providers=[],
            faiss_device=None,
            cache_backend=None,
            cache_status=None,
        )
        return JSONResponse(body.model_dump(), status_code=503)
    ready = state.ready and not state.draining
    body = ReadinessResponse(
        ready=ready,
        bundle_version=state.bundle.version,
        onnx_providers=state.pipeline.onnx_providers,
        onnx_precisions=state.pipeline.onnx_precisions,
        faiss_device=state.pipeline.retriever.device,
        cache_backend=state.cache.backend,
        cache_status=await state.cache.status(),
        database_backend=state.records.backend,
        database_status=await database_status(state),
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def database_status(state: AppState) -> str:
    records = state.records
    try:
        await records.run(records.ping)
    except RecordsUnavailable:
        return "unreachable"
    return "ok"


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state: AppState | None = getattr(request.app.state, "reco", None)
    if state is not None and state.redis_breaker is not None:
        request.app.state.metrics.cache_breaker_open.set(1 if state.redis_breaker.is_open else 0)
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
