"""API request and response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, WithJsonSchema


def _not_bool(value: Any) -> Any:
    # JSON booleans are not numbers (pydantic would read true as 1): what the schema says is what is accepted.
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]  # 10 and 10.0 (a JSON Schema integer) but not true


def _id_to_str(value: Any) -> Any:
    # Ids are strings; a JSON integer is accepted for convenience (MovieLens ids are numbers). Not booleans.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# Documented as what it accepts: a string, or an integer (converted to its decimal string).
Id = Annotated[
    str,
    BeforeValidator(_id_to_str),
    Field(min_length=1, max_length=128),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": 128}, {"type": "integer"}]}),
]


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": "1", "k": 10}]})

    user_id: Id = Field(description="The user's id as in the training data; unknown ids get the cold-start fallback.")
    k: Int = Field(10, ge=1, description="How many items to return (at most the service's max_k).")
    exclude_item_ids: list[Id] = Field(
        default_factory=list,
        description="Items never to return, in addition to the user's already-seen items.",
    )
    explain: StrictBool = Field(False, description="Add to each item the history item most similar to it (`because`).")


class Because(BaseModel):
    item_id: str
    title: str
    similarity: float = Field(description="Cosine of the two items' embeddings.")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    retrieval_score: float = Field(description="Two-tower inner product (cosine) of user and item.")
    ranking_score: float = Field(
        description="Ranker score in (0, 1), higher is better (a calibrated probability only for a BCE-trained ranker)."
    )
    because: Because | None = Field(
        None, description="With explain=true: the user's history item most similar to this one, if any history."
    )


EventType = Literal["view", "click", "like", "purchase", "dislike"]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="Any user id; a user the bundle does not know is personalised from events.")
    item_id: Id = Field(description="An item id the bundle knows.")
    event_type: EventType = Field(
        "click", description="dislike: never recommend the item; any other type joins the user's history."
    )
    timestamp: StrictFloat | None = Field(
        None, ge=0, description="Unix seconds; orders a batch's events per user (default: arrival order)."
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The client's id for the event: sent again (a retry), it is stored once.",
    )
    request_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The request_id of the recommendation list that showed the item: the event is attributed to "
        "that list (its experiment variant, the item's position) in the experiments' results.",
    )


class EventBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"events": [{"user_id": "1", "item_id": "50", "event_type": "click"}]}]},
    )

    events: list[Event] = Field(min_length=1, description="One or more events (at most the service's limit).")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events in the request, every one now stored (durably, in the database).")
    users: int
    duplicates: int = Field(0, description="Of those, events whose event_id was already stored (not stored again).")


class ItemUpsert(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"title": "Arrival (2016)", "genres": ["Drama", "Sci-Fi"], "year": 2016, "description": ""}]
        },
    )

    title: str = Field(min_length=1, max_length=512)
    genres: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=64,
        description="Genre names as in the bundle; unknown ones only go into the text.",
    )
    year: Annotated[int, Field(ge=1800, le=2100), BeforeValidator(_not_bool)] | None = Field(
        None, description="Release year."
    )
    description: str = Field("", max_length=4096, description="Free text, embedded with the title and genres.")


class ItemUpserted(BaseModel):
    item_id: str
    created: bool = Field(description="False when this exact item had already been added (nothing changed).")
    n_items: int = Field(description="Items in the index now.")


class SimilarityReason(BaseModel):
    embedding_cosine: float = Field(description="Cosine of the two items' two-tower embeddings.")
    co_consumption: float = Field(
        description="How strongly liking the queried item predicts liking this one (its co-consumption weight, "
        "scaled by the queried item's strongest; 0: no co-consumption, e.g. an item added live)."
    )


class SimilarItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="The similarity blend, higher is more similar (the manifest's similar_items).")
    reason: SimilarityReason | None = Field(None, description="With explain=true: the blend's parts.")


class SimilarItemsResponse(BaseModel):
    bundle_version: str
    item_id: str
    method: str = Field(description="How similarity is computed, with the weights (from the bundle's manifest).")
    items: list[SimilarItem]


class RecommendationResponse(BaseModel):
    request_id: str
    bundle_version: str
    user_id: str
    fallback: str | None = Field(None, description="Set when a fallback served the request, e.g. unknown_user.")
    items: list[RecommendedItem]


class ReadinessResponse(BaseModel):
    ready: bool
    bundle_version: str | None
    onnx_providers: list[str]
    onnx_precisions: dict[str, str] = Field(default_factory=dict, description="model -> fp32 | fp16")
    faiss_device: str | None
    cache_backend: str | None
    cache_status: str | None
    database_backend: str | None = Field(None, description="sqlite | postgresql: the system of record")
    database_status: str | None = Field(
        None, description="ok | unreachable; reported, never required: recommendations are served without it"
    )


class ErrorResponse(BaseModel):
    error: str
    message: str
    detail: list[dict[str, Any]] = Field(default_factory=list)


class UserDeleted(BaseModel):
    events_deleted: int = Field(description="The user's events deleted from the database.")
    embeddings_deleted: int = Field(description="Cached user embeddings deleted (every bundle version).")


class StoredEventOut(BaseModel):
    event_id: str | None
    item_id: str
    event_type: str
    timestamp: float | None = Field(description="The client's time, if it sent one.")
    received_at: float = Field(description="When the service stored it (Unix seconds).")


class BundleHoldings(BaseModel):
    """What the served bundle holds of a user (the model files, not the database): how an operator verifies a
    deletion. A deleted user the bundle still holds is `masked` (served as a new user) until a bundle built
    without them is served."""

    version: str
    history_length: int = Field(description="Interactions of the user the bundle was trained on (its history).")
    negatives: int = Field(description="Items the user gave only negative feedback, in the bundle's data.")
    embedding: bool = Field(description="The user tower has a learnt embedding row for this user id.")
    masked: bool = Field(description="Deleted since the bundle's data was read: none of the above is used.")


class UserRecord(BaseModel):
    """Everything the service holds about a user (the right of access): the system of record's row and events,
    and what the served bundle holds of them."""

    user_id: str
    known_to_bundle: bool = Field(description="The served bundle has this user (trained on their interactions).")
    bundle: BundleHoldings
    first_seen: float | None = Field(description="Their first event received (Unix seconds); null: none.")
    last_seen: float | None
    events: list[StoredEventOut] = Field(description="Every event stored for the user, oldest first.")
    lists_shown: int = Field(
        0,
        description="Recommendation lists recorded as shown to them (impressions: items, variant); deleted with them.",
    )


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_path: str | None = Field(
        None, min_length=1, max_length=4096, description="Bundle directory to load; default: RECO_BUNDLE_PATH."
    )


class Reloaded(BaseModel):
    previous_version: str
    bundle_version: str


# --- The operators' dashboard (/ui) and its admin JSON routes (service/api/ui.py) ----------------------------------


class ItemRef(BaseModel):
    item_id: str
    title: str


class FreshEventOut(BaseModel):
    item_id: str
    title: str | None = Field(description="Null for an item the served bundle does not hold.")
    disliked: bool


class UserView(BaseModel):
    user_id: str
    known_to_bundle: bool
    history_length: int = Field(description="Interactions the served bundle was trained on for this user.")
    history: list[ItemRef] = Field(description="The latest 50 of them, oldest first.")
    fresh: list[FreshEventOut] = Field(description="Recent events the service holds (the cache, else the database).")


class ItemView(BaseModel):
    item_id: str
    title: str
    trained: bool = Field(description="In the served bundle's training data; false: added live (PUT /v1/items).")
    genres: list[str]
    year: int | None
    description: str
    log_popularity: float = Field(description="log1p(interactions) / max over the training data; 0 for a live item.")


class Overview(BaseModel):
    bundle_version: str
    created_at: str
    schema_version: int
    n_users: int
    n_trained_items: int
    n_items: int = Field(description="Items in the index now (trained + added live).")
    onnx_provider: str
    onnx_precision: str
    faiss_device: str
    index: dict[str, Any]
    validation: dict[str, Any] = Field(description="The bundle's validation metrics (its manifest).")
    training_seconds: float | None


class BundleEntryOut(BaseModel):
    version: str
    created_at: float
    data_window: dict[str, Any]
    metrics: dict[str, Any]
    gate: str
    status: str
    published_at: float | None
    on_disk: bool = Field(description="Under this replica's bundles root (RECO_BUNDLES_ROOT).")


class RetrainOut(BaseModel):
    started_at: float
    finished_at: float
    result: str
    version: str | None
    message: str


class BundlesView(BaseModel):
    serving: str = Field(description="The version this process serves.")
    published: str | None = Field(description="The version the registry names as published.")
    sync_s: float = Field(description="RECO_BUNDLE_SYNC_S: how often every process follows the registry (0: never).")
    bundles: list[BundleEntryOut]
    retrains: list[RetrainOut]


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    override_gate: StrictBool = Field(False, description="Publish a bundle the quality gate rejected.")


class Published(BaseModel):
    published: str
    previous: str | None


# --- Error responses the routes document (OpenAPI `responses`) -------------------------------------------------------
ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorResponse, "description": "Invalid request; `message` names the field."},
    503: {
        "model": ErrorResponse,
        "description": "Not ready (starting or stopping), overloaded, past its deadline, or a backend failed; "
        "retry after `Retry-After` seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
    },
}
ERRORS[413] = {"description": "The body is larger than RECO_MAX_BODY_BYTES (plain text)."}
ERRORS[400] = {"model": ErrorResponse, "description": "The body is not valid JSON."}
NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": ErrorResponse, "description": "Unknown item id."}}

BAD_REQUEST_LINE: dict[int | str, dict[str, object]] = {
    400: {"description": "The HTTP server refused the request line (e.g. too long).", "content": {"text/plain": {}}}
}

RELOAD_ERRORS: dict[int | str, dict[str, object]] = {
    409: {
        "model": ErrorResponse,
        "description": "The bundle was refused (the reason is given; the old one keeps serving), a reload is "
        "already in progress, or there is nothing to roll back to.",
    }
}
