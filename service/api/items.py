"""Items: the items similar to one (`GET /v1/items/{id}/similar`), an item added live (`PUT /v1/items/{id}`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from service.api.auth import admin_router, client_router
from service.api.schemas import (
    BAD_REQUEST_LINE,
    ERRORS,
    NOT_FOUND,
    ErrorResponse,
    ItemUpsert,
    ItemUpserted,
    SimilarItem,
    SimilarItemsResponse,
    SimilarityReason,
)
from service.core.errors import Conflict, InvalidField, NotFound, Unavailable
from service.items.live_items import ItemConflict, ItemRecord
from service.serving.state import StateDep
from service.store.records import RecordsUnavailable

client = client_router()  # RECO_API_KEY
admin = admin_router()  # RECO_ADMIN_TOKEN


@client.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarItemsResponse,
    responses=ERRORS | NOT_FOUND | BAD_REQUEST_LINE,
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


@admin.put(
    "/v1/items/{item_id}",
    response_model=ItemUpserted,
    responses=ERRORS | {409: {"model": ErrorResponse, "description": "The id is taken by other content."}},
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
