"""Online experiments through the admin API (and the dashboard's Experiments page): create an experiment with its
variants and traffic shares, start it (every replica follows within RECO_EXPERIMENTS_SYNC_S), stop it, and read
its results per variant with their tests; the post-publish guard's comparison of the served bundle with the one
before it."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import admin_router
from service.api.schemas import ERRORS, ErrorResponse
from service.core.bundle import MANIFEST
from service.core.errors import Conflict, InvalidField, NotFound, Unavailable
from service.experiments.design import MAX_EXPLORATION, Experiment, Variant, check_variants, normalised
from service.experiments.guard import compare_bundles
from service.experiments.results import results
from service.serving.state import AppState, StateDep
from service.store import experiments as store
from service.store.records import RecordsUnavailable

router = admin_router()  # RECO_ADMIN_TOKEN
_ERRORS: dict[int | str, dict[str, Any]] = ERRORS | {
    404: {"model": ErrorResponse, "description": "No experiment of that name, or no bundle of a variant's version."},
    409: {
        "model": ErrorResponse,
        "description": "The change does not fit the experiment's state (a name taken, another running), or two "
        "variants share a name.",
    },
}
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class VariantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    share: float = Field(
        gt=0, le=1, description="Share of the experiment's users, relative: the shares are scaled to sum to 1."
    )
    ordering: Literal["model", "popular"] = Field(
        "model", description="model: the bundle's own ordering; popular: the most popular items the user has not seen."
    )
    exploration: float = Field(
        0.0,
        ge=0,
        le=MAX_EXPLORATION,
        description="Expected share of slots given to items the model ranked lower or showed rarely (0: none); "
        "each slot's propensity is logged with the list.",
    )
    exploration_pool: int = Field(
        50, ge=1, le=500, description="How far past the k-th item exploration and diversity draw."
    )
    diversity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Maximal marginal relevance's weight: each slot goes to the candidate with the best mix of "
        "(1 - diversity) x its ranking and diversity x its dissimilarity to the items above it (0: the ranking).",
    )
    bundle: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="A bundle version under RECO_BUNDLES_ROOT, served to this variant's users beside the published "
        "one (null: the published bundle).",
    )


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ranker-vs-popular",
                    "variants": [
                        {"name": "popular", "share": 0.5, "ordering": "popular"},
                        {"name": "model", "share": 0.5},
                    ],
                },
                {
                    "name": "new-bundle",
                    "variants": [
                        {"name": "published", "share": 0.8},
                        {"name": "candidate", "share": 0.2, "bundle": "20261207T101500-3f2a9c1d"},
                    ],
                },
            ]
        },
    )

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    variants: list[VariantSpec] = Field(
        min_length=2, max_length=10, description="The first is the control every other variant is compared with."
    )


class ExperimentOut(BaseModel):
    name: str
    variants: list[dict[str, Any]]
    status: str
    created_at: float
    started_at: float | None
    stopped_at: float | None


async def _call(state: AppState, fn: Any, *args: Any) -> Any:
    try:
        return await state.records.run(functools.partial(fn, state.records.engine, *args))
    except store.ExperimentConflict as e:
        raise Conflict(str(e)) from e
    except KeyError as e:
        raise NotFound(f"path.name: no experiment {e.args[0]!r}") from e
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e


@router.post("/admin/experiments", response_model=ExperimentOut, status_code=201, responses=_ERRORS)
async def create_experiment(body: ExperimentCreate, state: StateDep) -> ExperimentOut:
    """Create an experiment (not yet running): its variants and their traffic shares."""
    names = [v.name for v in body.variants]
    if len(set(names)) != len(names):  # (a JSON schema cannot say it: a 409, not a 422 the schema would contradict)
        raise Conflict(f"body.variants: variant names must be unique, got {names}")
    variants = normalised([Variant(**v.model_dump()) for v in body.variants])
    problem = check_variants(variants)
    if problem is not None:
        raise InvalidField(("body", "variants"), problem)
    root = state.settings.reload_root
    for n, v in enumerate(variants):  # (validated, loaded and warmed up when the experiment starts)
        if v.bundle is not None and not (root / v.bundle / MANIFEST).is_file():
            raise NotFound(f"body.variants.{n}.bundle: no bundle {v.bundle!r} under the bundles root")
    row = await _call(state, store.create, body.name, [v.spec() for v in variants])
    return ExperimentOut(**asdict(row))


@router.get("/admin/experiments", response_model=list[ExperimentOut], responses=ERRORS)
async def list_experiments(state: StateDep) -> list[ExperimentOut]:
    """Every experiment, newest first."""
    return [ExperimentOut(**asdict(r)) for r in await _call(state, store.listed)]


@router.post("/admin/experiments/{name}/start", response_model=ExperimentOut, responses=_ERRORS)
async def start_experiment(name: Name, state: StateDep) -> ExperimentOut:
    """Start a created experiment (one runs at a time): this process at once, every other within the sync, each
    once it has opened the bundles its variants name."""
    row = await _call(state, store.start, name)
    await state.prepare_experiment(Experiment.of(row))
    state.experiments.follow(row)
    return ExperimentOut(**asdict(row))


@router.post("/admin/experiments/{name}/stop", response_model=ExperimentOut, responses=_ERRORS)
async def stop_experiment(name: Name, state: StateDep) -> ExperimentOut:
    """Stop a running experiment: every user gets the bundle's ordering again; its results stay."""
    row = await _call(state, store.stop, name)
    state.experiments.follow(None)
    await state.prepare_experiment(None)  # the bundles only it served are closed
    return ExperimentOut(**asdict(row))


@router.get("/admin/experiments/{name}/results", responses=_ERRORS)
async def experiment_results(
    name: Name,
    state: StateDep,
    k: Annotated[int, Query(ge=1, le=1000, description="CTR@k: clicks on the first k items of a list.")] = 10,
    bucket_s: Annotated[float, Query(ge=1, description="The curves' time step.")] = 3600.0,
) -> dict[str, Any]:
    """Per variant: lists, CTR@k, clicks per list, like and purchase rates, coverage; each compared with the
    control (the first variant) by a fixed-horizon test and an always-valid one (safe to read as often as wanted:
    `significant` is its verdict at 5 %); the cumulative CTR@k curves per `bucket_s`."""
    row = await _call(state, store.get, name)
    if row is None:
        raise NotFound(f"path.name: no experiment {name!r}")
    shown = await _call(state, lambda engine: store.shown(engine, experiment=name))
    n_items = len(state.bundle.item_ids)
    out = results(shown, [v["name"] for v in row.variants], k=k, n_items=n_items, bucket_s=bucket_s)
    return {"experiment": ExperimentOut(**asdict(row)).model_dump(), **out}


@router.get("/admin/guard", responses=ERRORS)
async def bundle_guard(state: StateDep) -> dict[str, Any]:
    """The post-publish guard: the served bundle's live CTR (lists with a click) against the bundle served before
    it (from their impressions), with the always-valid test; `regression` when it is significantly lower (the
    dashboard then offers the registry's rollback)."""
    try:
        return await compare_bundles(state.records, state.bundle.version, min_lists=state.settings.guard_min_lists)
    except RecordsUnavailable as e:
        raise Unavailable(str(e)) from e
