"""A user's data: everything held about them (`GET /v1/users/{id}`), forgetting them (`DELETE`)."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import Path

from service.api.auth import admin_router
from service.api.schemas import (
    ERRORS,
    BundleHoldings,
    StoredEventOut,
    UserDeleted,
    UserRecord,
)
from service.core.errors import Unavailable
from service.serving.state import StateDep
from service.store import experiments
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
    be reached and nothing may be assumed deleted: retry. From then on the user is served as a new one: this
    process masks what the served bundle holds of them (history, seen items, embedding) at once, every other process
    and replica within RECO_BUNDLE_SYNC_S (`service.store.forgotten`); `retrain` builds the next bundle without
    them. What aggregates learnt from everyone (item-item weights, popularity) keeps their part until then."""
    try:
        events, embeddings = await state.recommender.delete_user(user_id)
    except (EventStoreUnavailable, CacheUnavailable) as e:
        raise Unavailable(str(e)) from e
    state.metrics.user_deletions.inc()
    return UserDeleted(events_deleted=events, embeddings_deleted=embeddings)


@router.get("/v1/users/{user_id}", response_model=UserRecord, responses=ERRORS)
async def get_user(user_id: Annotated[str, Path(min_length=1, max_length=128)], state: StateDep) -> UserRecord:
    """Everything held about a user (admin; the right of access): their row and every event in the database,
    and what the served bundle holds of them (`bundle`: after a deletion, `masked` until a bundle without them is
    served). A user the service holds nothing about is not an error: their record is empty."""
    records = state.records
    try:
        profile, stored = await records.run(lambda: records.user(user_id))
        shown = await records.run(functools.partial(experiments.impressions_of, records.engine, user_id))
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
    bundle = state.bundle
    user = bundle.user_index.get(user_id, -1)
    return UserRecord(
        user_id=user_id,
        known_to_bundle=user >= 0,
        bundle=BundleHoldings(
            version=bundle.version,
            history_length=len(bundle.history(user)),
            negatives=len(bundle.negatives(user)),
            embedding=user >= 0,
            masked=user >= 0 and state.recommender.forgotten.masks(user_id, bundle),
        ),
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
        lists_shown=shown,
    )
