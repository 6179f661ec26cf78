"""HTTP routes."""

from __future__ import annotations

import re
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import InvalidField
from service.schemas import (
    ErrorResponse,
    ReadinessResponse,
    RecommendationRequest,
    RecommendationResponse,
    RecommendedItem,
)
from service.state import AppState, StateDep

router = APIRouter()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorResponse, "description": "Invalid request; `message` names the field."},
    503: {"model": ErrorResponse, "description": "Not ready (starting or stopping)."},
}


@router.post("/v1/recommendations", response_model=RecommendationResponse, responses=_ERRORS)
async def recommend(body: RecommendationRequest, request: Request, state: StateDep) -> RecommendationResponse:
    """Top-k items for a user: cached or computed user embedding -> FAISS candidates -> drop already-seen
    and excluded items -> ONNX ranker -> best k."""
    settings = state.settings
    if body.k > settings.max_k:
        raise InvalidField(("body", "k"), f"must be at most {settings.max_k}, got {body.k}")
    if len(body.exclude_item_ids) > settings.max_exclusions:
        raise InvalidField(("body", "exclude_item_ids"), f"at most {settings.max_exclusions} ids")
    header_id = request.headers.get("x-request-id", "")
    request_id = header_id if _REQUEST_ID.match(header_id) else uuid.uuid4().hex
    result = await state.recommender.recommend(body.user_id, body.k, body.exclude_item_ids)
    recs, bundle = result.recommendations, state.bundle
    return RecommendationResponse(
        request_id=request_id,
        bundle_version=bundle.version,
        user_id=body.user_id,
        fallback="unknown_user" if result.user_index < 0 else None,
        items=[
            RecommendedItem(
                item_id=bundle.item_ids[i],
                title=bundle.item_titles[i],
                retrieval_score=float(r),
                ranking_score=float(s),
            )
            for i, r, s in zip(recs.items.tolist(), recs.retrieval_scores, recs.ranking_scores, strict=True)
        ],
    )


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
    body = ReadinessResponse(
        ready=state.ready,
        bundle_version=state.bundle.version,
        onnx_providers=state.pipeline.onnx_providers,
        faiss_device=state.pipeline.retriever.device,
        cache_backend=state.cache.backend,
        cache_status=await state.cache.status(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state: AppState | None = getattr(request.app.state, "reco", None)
    registry = request.app.state.metrics.registry
    if state is not None and hasattr(state.cache, "breaker"):
        request.app.state.metrics.cache_breaker_open.set(1 if state.cache.breaker.is_open else 0)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
