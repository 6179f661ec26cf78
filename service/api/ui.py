"""The operators' dashboard: the pages at /ui (one static single-page app in service/api/ui_static, no build step)
and the admin JSON routes it reads (overview, a user's data, an item, the bundle registry with publish and
rollback).

The pages themselves hold no data and are open (the shell of an app); everything they show comes from the admin
routes here and the client routes, called with the admin token the page asks for once and keeps for the
browser session (sessionStorage, sent as a bearer header, never in a URL).
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.api.auth import admin_router
from service.api.schemas import ERRORS as COMMON_ERRORS
from service.api.schemas import (
    BundleEntryOut,
    BundlesView,
    ErrorResponse,
    FreshEventOut,
    ItemRef,
    ItemView,
    Overview,
    Published,
    PublishRequest,
    RetrainOut,
    UserView,
)
from service.core.errors import Conflict, NotFound, Unavailable
from service.recommend.features import genres_of, year_of
from service.serving.state import StateDep
from service.store import registry
from service.store.events import DISLIKE_PREFIX
from service.store.records import RecordsUnavailable

STATIC = FilePath(__file__).with_name("ui_static")
HISTORY_SHOWN = 50

pages = APIRouter(include_in_schema=False)  # the app shell: open, no data
admin = admin_router()
# As the API's other routes (400, 413, 422, 503), and an unknown id.
_ERRORS: dict[int | str, dict[str, object]] = COMMON_ERRORS | {
    404: {"model": ErrorResponse, "description": "Unknown id."},
}


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


@pages.get("/ui")
@pages.get("/ui/")
@pages.get("/ui/bundles")
@pages.get("/ui/experiments")
@pages.get("/ui/experiments/{name}")
@pages.get("/ui/users/")
@pages.get("/ui/users/{user_id}")
@pages.get("/ui/items/")
@pages.get("/ui/items/{item_id}")
async def page(user_id: str | None = None, item_id: str | None = None, name: str | None = None) -> FileResponse:
    """Every page is the one app; it reads the path and renders that page (so each has its own link)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@admin.get("/admin/overview", response_model=Overview, responses=_ERRORS)
async def overview(state: StateDep) -> Overview:
    """The bundle served, its validation metrics, the index and the devices (for the dashboard)."""
    bundle, pipeline = state.bundle, state.pipeline
    manifest = bundle.manifest
    training = manifest.training.get("seconds")
    return Overview(
        bundle_version=bundle.version,
        created_at=manifest.created_at.isoformat(),
        schema_version=manifest.schema_version,
        n_users=manifest.dims.n_users,
        n_trained_items=manifest.dims.n_items,
        n_items=pipeline.retriever.n_items,
        onnx_provider=pipeline.onnx_providers[0],
        onnx_precision="/".join(sorted(set(pipeline.onnx_precisions.values()))),
        faiss_device=pipeline.retriever.device,
        index=manifest.index.model_dump(),
        validation=manifest.metrics.get("validation", {}),
        training_seconds=float(training) if isinstance(training, int | float) else None,
    )


@admin.get("/admin/users/{user_id}", response_model=UserView, responses=_ERRORS)
async def user_view(user_id: Annotated[str, Path(min_length=1, max_length=128)], state: StateDep) -> UserView:
    """What the pipeline sees of a user: the bundle's history (with titles) and the recent events it holds."""
    bundle = state.bundle
    user, _ = state.recommender.user_of(user_id)  # a deleted user the bundle still holds: none of it is used
    history = bundle.history(user)
    entries = await state.recommender.events.recent(user_id)
    fresh = []
    for entry in entries:
        disliked = entry.startswith(DISLIKE_PREFIX)
        item_id = entry[len(DISLIKE_PREFIX) :] if disliked else entry
        index = bundle.item_index.get(item_id)
        fresh.append(
            FreshEventOut(
                item_id=item_id, title=None if index is None else bundle.item_titles[index], disliked=disliked
            )
        )
    return UserView(
        user_id=user_id,
        known_to_bundle=user >= 0,
        history_length=len(history),
        history=[ItemRef(item_id=bundle.item_ids[i], title=bundle.item_titles[i]) for i in history[-HISTORY_SHOWN:]],
        fresh=fresh,
    )


@admin.get("/admin/items/{item_id}", response_model=ItemView, responses=_ERRORS)
async def item_view(item_id: Annotated[str, Path(min_length=1, max_length=128)], state: StateDep) -> ItemView:
    """An item of the catalogue: trained or added live, its genres, year and popularity."""
    bundle = state.bundle
    index = bundle.item_index.get(item_id)
    if index is None:
        raise NotFound(f"path.item_id: unknown item {item_id!r}")
    live = state.serving.live_items.record(item_id)
    if live is not None:
        return ItemView(
            item_id=item_id,
            title=live.title,
            trained=False,
            genres=live.genres,
            year=live.year,
            description=live.description,
            log_popularity=0.0,
        )
    names = bundle.manifest.feature_spec.item_dense
    dense = bundle.item_dense[index]
    genres = genres_of(dense, names)
    year = int(year_of(dense[None, :], names)[0])
    return ItemView(
        item_id=item_id,
        title=bundle.item_titles[index],
        trained=index < bundle.manifest.dims.n_items,
        genres=genres,
        year=year or None,
        description="",
        log_popularity=float(np.float32(bundle.item_log_popularity[index])),
    )


@admin.get("/admin/bundles", response_model=BundlesView, responses=_ERRORS)
async def bundles_view(state: StateDep) -> BundlesView:
    """The bundle registry (every bundle a retrain built, its gate scores and status) and the latest retrains."""
    engine = state.records.engine

    def read() -> tuple[list[registry.Entry], list[registry.Retrain]]:
        return registry.entries(engine), registry.last_retrains(engine)

    try:
        rows, runs = await state.records.run(read)
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    root = state.settings.reload_root
    return BundlesView(
        serving=state.bundle.version,
        published=next((r.version for r in rows if r.status == "published"), None),
        sync_s=state.settings.bundle_sync_s,
        bundles=[BundleEntryOut(**asdict(r), on_disk=(root / r.version).is_dir()) for r in rows],
        retrains=[RetrainOut(**asdict(r)) for r in runs],
    )


@admin.post(
    "/admin/bundles/{version}/publish", response_model=Published, responses=_ERRORS | {409: {"model": ErrorResponse}}
)
async def publish_bundle(
    version: Annotated[str, Path(min_length=1, max_length=128)], state: StateDep, body: PublishRequest | None = None
) -> Published:
    """Publish a registered bundle: every process loads it within RECO_BUNDLE_SYNC_S. A bundle the quality gate
    rejected needs `override_gate`."""
    override = body.override_gate if body is not None else False
    call = functools.partial(registry.publish, state.records.engine, version, override_gate=override)
    try:
        before = await state.records.run(call)
    except registry.RegistryError as e:
        raise Conflict(f"path.version: {e}") from e
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    return Published(published=version, previous=before.version if before is not None else None)


@admin.post("/admin/bundles/rollback", response_model=Published, responses=_ERRORS | {409: {"model": ErrorResponse}})
async def rollback_registry(state: StateDep) -> Published:
    """Publish the bundle published before the current one (which is marked rolled back), on every process."""
    try:
        old, new = await state.records.run(functools.partial(registry.rollback, state.records.engine))
    except registry.RegistryError as e:
        raise Conflict(str(e)) from e
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    return Published(published=new.version, previous=old.version)
