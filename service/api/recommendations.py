"""`POST /v1/recommendations`: the route, and its work for the fast path (`service.api.fast_path`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request, Response
from pydantic_core import to_json

from service.api.auth import client_router
from service.api.schemas import (
    ERRORS,
    RecommendationRequest,
    RecommendationResponse,
)
from service.core.errors import InvalidField
from service.core.logs import UserHasher
from service.experiments.treatment import treat
from service.recommend.features import most_similar_in_history
from service.serving.state import AppState, StateDep
from service.store.experiments import Impression

router = client_router()  # RECO_API_KEY


@router.post("/v1/recommendations", response_model=RecommendationResponse, responses=ERRORS)
async def recommend(body: RecommendationRequest, request: Request, state: StateDep) -> Response:
    """Top-k items for a user: cached or computed user embedding -> FAISS candidates -> drop already-seen
    and excluded items -> ONNX ranker -> best k."""
    content = await recommendations_json(state, body, request.scope["state"], request.app.state.user_hash)
    return Response(content, media_type="application/json")


async def recommendations_json(
    state: AppState, body: RecommendationRequest, request_state: dict[str, Any], user_hash: UserHasher
) -> bytes:
    """The route's work, also called by service.api.fast_path: the RecommendationResponse as JSON. `request_state` is
    the request's scope["state"] (its request id in; the access record's hashed user out)."""
    settings = state.settings
    if body.k > settings.max_k:
        raise InvalidField(("body", "k"), f"must be at most {settings.max_k}, got {body.k}")
    if len(body.exclude_item_ids) > settings.max_exclusions:
        raise InvalidField(("body", "exclude_item_ids"), f"at most {settings.max_exclusions} ids")
    request_id: str = request_state["request_id"]  # set by HTTPMetricsMiddleware from X-Request-ID or new
    request_state["user_hash"] = user_hash(body.user_id)  # the access record's `user`
    # One bundle for the whole request, whatever a reload does meanwhile: the published one, or the variant's.
    experiment, variant, serving = state.assign(body.user_id)
    async with state.admit():
        treated = await treat(
            serving.recommender, variant, body.user_id, body.k, body.exclude_item_ids, state.exposure, state.rng
        )
    result = treated.result
    recs, bundle = result.recommendations, serving.bundle
    shown = [bundle.item_ids[i] for i in recs.items.tolist()]
    state.exposure.add(shown)
    if experiment is not None:
        state.metrics.experiment_lists.labels(experiment, variant.name).inc()
        if treated.explored:
            state.metrics.explored_slots.labels(experiment, variant.name).inc(treated.explored)
    if state.impressions is not None:
        state.impressions.record(
            Impression(
                request_id,
                body.user_id,
                bundle.version,
                experiment,
                variant.name if experiment is not None else None,
                shown,
                treated.propensities,
                time.time(),
            )
        )
    because: list[dict[str, Any] | None] = [None] * len(recs.items)
    if body.explain and recs.window is not None:
        sources, sims = most_similar_in_history(bundle.item_embeddings, recs.items, recs.window)
        because = [
            {"item_id": bundle.item_ids[s], "title": bundle.item_titles[s], "similarity": sim} if s >= 0 else None
            for s, sim in zip(sources.tolist(), sims.tolist(), strict=True)
        ]
    # A RecommendationResponse (Because, RecommendedItem) as plain dicts, serialised by pydantic-core as the
    # model would serialise itself, without validating what was built here from typed arrays: a third of the
    # cost (a test checks the bytes equal the model's). NaN and infinities become null, as the model's do.
    response = {
        "request_id": request_id,
        "bundle_version": bundle.version,
        "user_id": body.user_id,
        "fallback": "unknown_user" if result.user_index < 0 and not result.fresh_events else None,
        "items": [
            {
                "item_id": item_id,
                "title": bundle.item_titles[i],
                "retrieval_score": r,
                "ranking_score": s,
                "because": b,
            }
            for item_id, i, r, s, b in zip(
                shown,
                recs.items.tolist(),
                recs.retrieval_scores.tolist(),
                recs.ranking_scores.tolist(),
                because,
                strict=True,
            )
        ],
    }
    return to_json(response, inf_nan_mode="null")
