"""HTTP routes."""

from __future__ import annotations

import pathlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic_core import to_json

from service.auth import admin_router, client_router
from service.bundle import BundleError
from service.cache import CacheUnavailable
from service.errors import Conflict, Forbidden, InvalidField, NotFound, Unavailable
from service.events import EventStoreUnavailable
from service.features import most_similar_in_history
from service.live_items import ItemConflict, ItemRecord
from service.logs import UserHasher
from service.records import NewEvent, RecordsUnavailable
from service.schemas import (
    ErrorResponse,
    EventBatch,
    EventsAccepted,
    ItemUpsert,
    ItemUpserted,
    ReadinessResponse,
    RecommendationRequest,
    RecommendationResponse,
    Reloaded,
    ReloadRequest,
    SimilarItem,
    SimilarItemsResponse,
    SimilarityReason,
    StoredEventOut,
    UserDeleted,
    UserRecord,
)
from service.state import AppState, StateDep

router = APIRouter()  # open: health, readiness, metrics
client = client_router()  # RECO_API_KEY
admin = admin_router()  # RECO_ADMIN_TOKEN
_ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorResponse, "description": "Invalid request; `message` names the field."},
    503: {
        "model": ErrorResponse,
        "description": "Not ready (starting or stopping), overloaded, past its deadline, or a backend failed; "
        "retry after `Retry-After` seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    },
}
_ERRORS[413] = {"description": "The body is larger than RECO_MAX_BODY_BYTES (plain text)."}
_ERRORS[400] = {"model": ErrorResponse, "description": "The body is not valid JSON."}
_NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": ErrorResponse, "description": "Unknown item id."}}


@client.post("/v1/recommendations", response_model=RecommendationResponse, responses=_ERRORS)
async def recommend(body: RecommendationRequest, request: Request, state: StateDep) -> Response:
    """Top-k items for a user: cached or computed user embedding -> FAISS candidates -> drop already-seen
    and excluded items -> ONNX ranker -> best k."""
    content = await recommendations_json(state, body, request.scope["state"], request.app.state.user_hash)
    return Response(content, media_type="application/json")


async def recommendations_json(
    state: AppState, body: RecommendationRequest, request_state: dict[str, Any], user_hash: UserHasher
) -> bytes:
    """The route's work, also called by service.fast_path: the RecommendationResponse as JSON. `request_state` is
    the request's scope["state"] (its request id in; the access record's hashed user out)."""
    settings = state.settings
    if body.k > settings.max_k:
        raise InvalidField(("body", "k"), f"must be at most {settings.max_k}, got {body.k}")
    if len(body.exclude_item_ids) > settings.max_exclusions:
        raise InvalidField(("body", "exclude_item_ids"), f"at most {settings.max_exclusions} ids")
    request_id: str = request_state["request_id"]  # set by HTTPMetricsMiddleware from X-Request-ID or new
    request_state["user_hash"] = user_hash(body.user_id)  # the access record's `user`
    serving = state.serving  # one bundle for the whole request, whatever a reload does meanwhile
    async with state.admit():
        result = await serving.recommender.recommend(body.user_id, body.k, body.exclude_item_ids)
    recs, bundle = result.recommendations, serving.bundle
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
                "item_id": bundle.item_ids[i],
                "title": bundle.item_titles[i],
                "retrieval_score": r,
                "ranking_score": s,
                "because": b,
            }
            for i, r, s, b in zip(
                recs.items.tolist(), recs.retrieval_scores.tolist(), recs.ranking_scores.tolist(), because, strict=True
            )
        ],
    }
    return to_json(response, inf_nan_mode="null")


@client.post(
    "/v1/events",
    response_model=EventsAccepted,
    responses=_ERRORS | {404: {"model": ErrorResponse, "description": "An unknown item id."}},
)
async def post_events(body: EventBatch, state: StateDep) -> EventsAccepted:
    """Record user events (one or a batch), durably: answered once the database has committed them. Interactions
    join the user's history and dislikes are filtered out, from the very next recommendation on; the user's
    embedding is recomputed after the answer (until it is, the next request encodes it)."""
    return await accept_events(state, body)


async def events_json(state: AppState, body: EventBatch, request_state: dict[str, Any], user_hash: UserHasher) -> bytes:
    """`POST /v1/events` for service.fast_path (the arguments every fast route takes): EventsAccepted as JSON."""
    return (await accept_events(state, body)).model_dump_json().encode()


async def accept_events(state: AppState, body: EventBatch) -> EventsAccepted:
    """The events route's work (the route and service.fast_path call it)."""
    settings = state.settings
    if len(body.events) > settings.max_events_per_request:
        raise InvalidField(("body", "events"), f"at most {settings.max_events_per_request} events per request")
    serving = state.serving
    index = serving.bundle.item_index
    for n, event in enumerate(body.events):
        if event.item_id not in index:
            raise NotFound(f"body.events.{n}.item_id: unknown item {event.item_id!r}")
    per_user: dict[str, list[tuple[float, int, NewEvent]]] = {}
    for n, event in enumerate(body.events):
        stored = NewEvent(event.user_id, event.item_id, event.event_type, event.timestamp, event.event_id)
        per_user.setdefault(event.user_id, []).append((event.timestamp or 0.0, n, stored))
    if len(per_user) > settings.max_event_users_per_request:
        limit = settings.max_event_users_per_request
        raise InvalidField(("body", "events"), f"at most {limit} distinct users per request, got {len(per_user)}")
    ordered = [stored for rows in per_user.values() for _, _, stored in sorted(rows, key=lambda r: r[:2])]
    try:
        async with state.admit(deadline=False):  # no deadline: a write half done must not be answered 503
            new = await serving.recommender.record_events(ordered)
    except EventStoreUnavailable as e:
        state.metrics.event_store_errors.labels("write").inc()
        raise Unavailable(str(e)) from e
    for event in body.events:
        state.metrics.events.labels(event.event_type).inc()
    return EventsAccepted(accepted=len(body.events), users=len(per_user), duplicates=len(body.events) - new)


_RELOAD_ERRORS: dict[int | str, dict[str, object]] = {
    409: {
        "model": ErrorResponse,
        "description": "The bundle was refused (the reason is given; the old one keeps serving), a reload is "
        "already in progress, or there is nothing to roll back to.",
    }
}


@admin.put(
    "/v1/items/{item_id}",
    response_model=ItemUpserted,
    responses=_ERRORS | {409: {"model": ErrorResponse, "description": "The id is taken by other content."}},
)
async def put_item(
    item_id: Annotated[str, Path(min_length=1, max_length=128)],
    body: ItemUpsert,
    state: StateDep,
) -> ItemUpserted:
    """Add an item while serving (admin): embedded from its text and features by the bundle's ONNX text encoder
    and item tower, added to the index at once (recommendable and findable as similar from the next request),
    and persisted so a restart re-applies it. Idempotent for identical content."""
    record = ItemRecord(item_id, body.title, list(body.genres), body.year, body.description)
    try:
        serving = state.serving
        created = await serving.recommender.run_blocking(lambda: serving.live_items.upsert(record))
    except ItemConflict as e:
        state.metrics.item_upserts.labels("conflict").inc()
        raise Conflict(f"path.item_id: {e}") from e
    except OSError as e:
        raise Unavailable(f"the live-items file could not be written: {e}") from e
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    state.metrics.item_upserts.labels("created" if created else "unchanged").inc()
    n_items = serving.pipeline.retriever.n_items
    state.metrics.index_items.set(n_items)
    return ItemUpserted(item_id=item_id, created=created, n_items=n_items)


@admin.delete("/v1/users/{user_id}", response_model=UserDeleted, responses=_ERRORS)
async def delete_user(
    user_id: Annotated[str, Path(min_length=1, max_length=128)],
    state: StateDep,
) -> UserDeleted:
    """Forget a user (admin): their events and row in the database, their cached events and every cached
    embedding of theirs (any bundle version) are deleted, and the deletion recorded. A 503 means a store could not
    be reached and nothing may be assumed deleted: retry. What a bundle learnt from the user's past interactions
    stays until the next bundle is built without them."""
    try:
        events, embeddings = await state.recommender.delete_user(user_id)
    except (EventStoreUnavailable, CacheUnavailable) as e:
        raise Unavailable(str(e)) from e
    state.metrics.user_deletions.inc()
    return UserDeleted(events_deleted=events, embeddings_deleted=embeddings)


@admin.get("/v1/users/{user_id}", response_model=UserRecord, responses=_ERRORS)
async def get_user(user_id: Annotated[str, Path(min_length=1, max_length=128)], state: StateDep) -> UserRecord:
    """Everything held about a user (admin; the right of access): their row and every event in the database,
    and whether the served bundle was trained on them. A user the service holds nothing about is not an error:
    their record is empty."""
    records = state.records
    try:
        profile, stored = await records.run(lambda: records.user(user_id))
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    return UserRecord(
        user_id=user_id,
        known_to_bundle=user_id in state.bundle.user_index,
        first_seen=profile["first_seen"] if profile else None,
        last_seen=profile["last_seen"] if profile else None,
        events=[
            StoredEventOut(
                event_id=e.event_id,
                item_id=e.item_id,
                event_type=e.event_type,
                timestamp=e.timestamp,
                received_at=e.received_at,
            )
            for e in stored
        ],
    )


_BAD_REQUEST_LINE: dict[int | str, dict[str, object]] = {
    400: {"description": "The HTTP server refused the request line (e.g. too long).", "content": {"text/plain": {}}}
}


@client.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarItemsResponse,
    responses=_ERRORS | _NOT_FOUND | _BAD_REQUEST_LINE,
)
async def similar_items(
    state: StateDep,
    item_id: Annotated[str, Path(min_length=1, max_length=128)],
    k: Annotated[int, Query(ge=1, description="How many items (at most the service's max_k).")] = 10,
    exclude_item_ids: Annotated[list[str] | None, Query(max_length=1000, description="Items never to return.")] = None,
    explain: Annotated[bool, Query(description="Add to each item the parts of its score (`reason`).")] = False,
) -> SimilarItemsResponse:
    """The items most similar to `item_id` (itself and exclusions left out): two-tower embedding cosine blended
    with co-consumption (what people who liked it went on to like), as the bundle's manifest says."""
    if k > state.settings.max_k:
        raise InvalidField(("query", "k"), f"must be at most {state.settings.max_k}, got {k}")
    serving = state.serving
    pipeline, bundle = serving.pipeline, serving.bundle
    item = bundle.item_index.get(item_id)
    if item is None:
        raise NotFound(f"path.item_id: unknown item {item_id!r}")
    exclude = pipeline.item_indices(exclude_item_ids or [])
    async with state.admit():
        similar = await serving.recommender.run_blocking(lambda: pipeline.similar(item, k, exclude))
    spec = bundle.manifest.similar_items
    return SimilarItemsResponse(
        bundle_version=bundle.version,
        item_id=item_id,
        method=f"{spec.method} (embedding {spec.embedding_weight:g}, co-consumption {spec.co_consumption_weight:g})",
        items=[
            SimilarItem(
                item_id=bundle.item_ids[i],
                title=bundle.item_titles[i],
                score=float(s),
                reason=SimilarityReason(embedding_cosine=float(c), co_consumption=float(w)) if explain else None,
            )
            for i, s, c, w in zip(
                similar.items.tolist(), similar.scores, similar.cosines, similar.co_consumption, strict=True
            )
        ],
    )


@admin.post("/admin/reload", response_model=Reloaded, responses=_ERRORS | _RELOAD_ERRORS)
async def reload_bundle(state: StateDep, body: ReloadRequest | None = None) -> Reloaded:
    """Load a bundle beside the one serving (default: RECO_BUNDLE_PATH again, e.g. a re-pointed `current`
    symlink), warm it up and swap it in atomically; in-flight requests finish on the old one. A bundle that does
    not validate is refused (422, with the reason) and the old one keeps serving."""
    path = body.bundle_path if body and body.bundle_path else None
    if path is not None and not _under(pathlib.Path(path), state.settings.reload_root):
        state.metrics.reloads.labels("refused").inc()
        # Nothing about the path itself (whether it exists, what it holds): only where bundles may come from.
        raise Forbidden("body.bundle_path: bundles are loaded from under the bundles root (RECO_BUNDLES_ROOT) only")
    return await _reload(state, path)


@admin.post("/admin/rollback", response_model=Reloaded, responses=_ERRORS | _RELOAD_ERRORS)
async def rollback_bundle(state: StateDep) -> Reloaded:
    """Go back to the bundle served before the last reload (a reload of that bundle)."""
    if state.previous_bundle is None:
        raise Conflict("nothing to roll back to: no reload has happened")
    return await _reload(state, state.previous_bundle)


async def _reload(state: AppState, path: str | pathlib.Path | None) -> Reloaded:
    try:
        old, new = await state.reload(None if path is None else pathlib.Path(path))
    except (BundleError, OSError, ValueError) as e:  # a path that cannot be opened, or holds a NUL byte
        state.metrics.reloads.labels("refused").inc()
        raise Conflict(f"body.bundle_path: bundle refused, still serving {state.bundle.version}: {e}") from e
    return Reloaded(previous_version=old, bundle_version=new)


def _under(path: pathlib.Path, root: pathlib.Path) -> bool:
    """Whether `path`, symlinks followed, lies under `root` (resolved). A path that cannot be resolved is not."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return False


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
