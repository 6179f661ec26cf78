"""`POST /v1/events`: user events into the system of record; the route, and its work for the fast path."""

from __future__ import annotations

from typing import Any

from service.api.auth import client_router
from service.api.schemas import (
    ERRORS,
    ErrorResponse,
    EventBatch,
    EventsAccepted,
)
from service.core.errors import InvalidField, NotFound, Unavailable
from service.core.logs import UserHasher
from service.serving.state import AppState, StateDep
from service.store.events import EventStoreUnavailable
from service.store.records import NewEvent

router = client_router()  # RECO_API_KEY


@router.post(
    "/v1/events",
    response_model=EventsAccepted,
    responses=ERRORS | {404: {"model": ErrorResponse, "description": "An unknown item id."}},
)
async def post_events(body: EventBatch, state: StateDep) -> EventsAccepted:
    """Record user events (one or a batch), durably: answered once the database has committed them. Interactions
    join the user's history and dislikes are filtered out, from the very next recommendation on; the user's
    embedding is recomputed after the answer (until it is, the next request encodes it)."""
    return await accept_events(state, body)


async def events_json(state: AppState, body: EventBatch, request_state: dict[str, Any], user_hash: UserHasher) -> bytes:
    """`POST /v1/events` for service.api.fast_path (the arguments every fast route takes): EventsAccepted as JSON."""
    return (await accept_events(state, body)).model_dump_json().encode()


async def accept_events(state: AppState, body: EventBatch) -> EventsAccepted:
    """The events route's work (the route and service.api.fast_path call it)."""
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
        stored = NewEvent(
            event.user_id, event.item_id, event.event_type, event.timestamp, event.event_id, event.request_id
        )
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
        if event.request_id is not None:  # attributed to a list: counted by the user's variant
            if event.event_type in ("click", "like", "purchase"):
                state.exposure.click(event.item_id)  # exploration's click counts
            experiment, variant = state.experiments.assign(event.user_id)
            if experiment is not None:
                state.metrics.experiment_events.labels(experiment, variant.name, event.event_type).inc()
    return EventsAccepted(accepted=len(body.events), users=len(per_user), duplicates=len(body.events) - new)
