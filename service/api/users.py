"""A user's data: everything held about them (`GET /v1/users/{id}`), forgetting them (`DELETE`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from service.api.auth import admin_router
from service.api.schemas import (
    ERRORS,
    StoredEventOut,
    UserDeleted,
    UserRecord,
)
from service.core.errors import Unavailable
from service.serving.state import StateDep
from service.store.cache import CacheUnavailable
from service.store.events import EventStoreUnavailable
from service.store.records import RecordsUnavailable

router = admin_router()  # RECO_ADMIN_TOKEN


@router.delete("/v1/users/{user_id}", response_model=UserDeleted, responses=ERRORS)
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


@router.get("/v1/users/{user_id}", response_model=UserRecord, responses=ERRORS)
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
