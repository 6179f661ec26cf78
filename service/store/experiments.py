"""Online experiments in the system of record: the experiments (`experiments` table), every list served
(`impressions`) and the events attributed to those lists (`events.request_id`).

Blocking functions over an Engine, run in the database threads (`Records.run`), like `service.store.registry`.
An experiment is created, then started (at most one runs at a time: every replica's follower reads which), then
stopped; a stopped experiment keeps its impressions and results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from service.store.schema import events, experiments, impressions

CREATED, RUNNING, STOPPED = "created", "running", "stopped"


class ExperimentConflict(Exception):
    """The change does not fit the experiment's state (a name taken, another experiment running, ...)."""


@dataclass(frozen=True, slots=True)
class ExperimentRow:
    name: str
    variants: list[dict[str, Any]]  # as created: [{"name", "share", ...settings}]
    status: str
    created_at: float
    started_at: float | None
    stopped_at: float | None


@dataclass(frozen=True, slots=True)
class Impression:
    request_id: str
    user_id: str
    bundle_version: str
    experiment: str | None
    variant: str | None
    items: list[str]
    propensities: list[float] | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Shown:
    """A list as the results read it back, with the events attributed to it."""

    request_id: str
    variant: str | None
    bundle_version: str
    items: list[str]
    created_at: float
    events: list[tuple[str, str]]  # (item id, event type)


def _row(r: Any) -> ExperimentRow:
    return ExperimentRow(r.name, json.loads(r.variants), r.status, r.created_at, r.started_at, r.stopped_at)


def create(engine: Engine, name: str, variants: list[dict[str, Any]]) -> ExperimentRow:
    now = time.time()
    row = {"name": name, "variants": json.dumps(variants), "status": CREATED, "created_at": now}
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(experiments).values(**row))
    except sa.exc.IntegrityError as e:
        raise ExperimentConflict(f"an experiment named {name!r} exists") from e
    return ExperimentRow(name, variants, CREATED, now, None, None)


def get(engine: Engine, name: str) -> ExperimentRow | None:
    with engine.connect() as connection:
        r = connection.execute(sa.select(experiments).where(experiments.c.name == name)).first()
    return _row(r) if r is not None else None


def listed(engine: Engine) -> list[ExperimentRow]:
    """Every experiment, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(experiments).order_by(experiments.c.created_at.desc())).all()
    return [_row(r) for r in rows]


def running(engine: Engine) -> ExperimentRow | None:
    with engine.connect() as connection:
        r = connection.execute(sa.select(experiments).where(experiments.c.status == RUNNING)).first()
    return _row(r) if r is not None else None


def _require(connection: sa.Connection, name: str, status: str, verb: str) -> None:
    """KeyError if there is no experiment `name`; ExperimentConflict unless it is in `status`."""
    found = connection.execute(sa.select(experiments.c.status).where(experiments.c.name == name)).first()
    if found is None:
        raise KeyError(name)
    if found.status != status:
        raise ExperimentConflict(f"experiment {name!r} is {found.status}; only a {status} one can {verb}")


def start(engine: Engine, name: str) -> ExperimentRow:
    """Start a created experiment; ExperimentConflict if another runs or this one is not `created`; KeyError if
    there is none of that name. One transaction, the status checked again by the UPDATE itself; two replicas
    starting two different experiments in the same instant could still both succeed (no constraint says one)."""
    with engine.begin() as connection:
        _require(connection, name, CREATED, "start")
        other = connection.execute(sa.select(experiments.c.name).where(experiments.c.status == RUNNING)).first()
        if other is not None:
            raise ExperimentConflict(f"experiment {other.name!r} is running: stop it first")
        done = connection.execute(
            sa.update(experiments)
            .where(experiments.c.name == name, experiments.c.status == CREATED)
            .values(status=RUNNING, started_at=time.time())
        ).rowcount
        if not done:
            raise ExperimentConflict(f"experiment {name!r} changed meanwhile")
    started = get(engine, name)
    assert started is not None
    return started


def stop(engine: Engine, name: str) -> ExperimentRow:
    with engine.begin() as connection:
        _require(connection, name, RUNNING, "stop")
        connection.execute(
            sa.update(experiments).where(experiments.c.name == name).values(status=STOPPED, stopped_at=time.time())
        )
    stopped = get(engine, name)
    assert stopped is not None
    return stopped


def store_impressions(engine: Engine, batch: Sequence[Impression]) -> tuple[int, int]:
    """Insert `batch` (one transaction); a request id stored before is skipped. (stored, duplicates)."""
    rows = [
        {
            "request_id": i.request_id,
            "user_id": i.user_id,
            "bundle_version": i.bundle_version,
            "experiment": i.experiment,
            "variant": i.variant,
            "items": json.dumps(i.items),
            "propensities": json.dumps(i.propensities) if i.propensities is not None else None,
            "created_at": i.created_at,
        }
        for i in {i.request_id: i for i in reversed(batch)}.values()  # the first of a repeated id
    ]
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(impressions).on_conflict_do_nothing(index_elements=["request_id"])
    with engine.begin() as connection:
        stored = len(connection.execute(insert.returning(impressions.c.request_id), rows).all()) if rows else 0
    return stored, len(batch) - stored


def shown(
    engine: Engine,
    *,
    experiment: str | None = None,
    bundle_versions: Sequence[str] | None = None,
    since: float | None = None,
) -> list[Shown]:
    """The lists served within `experiment` (or by `bundle_versions`, or all), since `since`, oldest first, each
    with the events whose request_id names it. Two queries, joined here: the lists, then their events."""
    query = sa.select(
        impressions.c.request_id,
        impressions.c.variant,
        impressions.c.bundle_version,
        impressions.c["items"].label("shown"),  # (`.c.items` is the collection's method)
        impressions.c.created_at,
    ).order_by(impressions.c.created_at)
    if experiment is not None:
        query = query.where(impressions.c.experiment == experiment)
    if bundle_versions is not None:
        query = query.where(impressions.c.bundle_version.in_(list(bundle_versions)))
    if since is not None:
        query = query.where(impressions.c.created_at >= since)
    attributed = sa.select(events.c.request_id, events.c.item_id, events.c.event_type).where(
        events.c.request_id.in_(query.with_only_columns(impressions.c.request_id).order_by(None).scalar_subquery())
    )
    with engine.connect() as connection:
        lists = connection.execute(query).all()
        by_request: dict[str, list[tuple[str, str]]] = {}
        for request_id, item_id, event_type in connection.execute(attributed):
            by_request.setdefault(request_id, []).append((item_id, event_type))
    return [
        Shown(
            r.request_id,
            r.variant,
            r.bundle_version,
            json.loads(r.shown),
            r.created_at,
            by_request.get(r.request_id, []),
        )
        for r in lists
    ]


def impressions_of(engine: Engine, user_id: str) -> int:
    """How many lists shown to the user are held (the right of access)."""
    with engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count()).select_from(impressions).where(impressions.c.user_id == user_id)
        ).scalar_one()
    return int(count)


def bundle_before(engine: Engine, current: str) -> tuple[float | None, str | None]:
    """(the first recorded list of bundle `current`, the bundle that served the last list before it): two index
    range reads, whatever the table's size. (None, None) while `current` has no list."""
    first_query = sa.select(sa.func.min(impressions.c.created_at)).where(impressions.c.bundle_version == current)
    with engine.connect() as connection:
        first = connection.execute(first_query).scalar_one_or_none()
        if first is None:
            return None, None
        before = connection.execute(
            sa.select(impressions.c.bundle_version)
            .where(impressions.c.created_at < first, impressions.c.bundle_version != current)
            .order_by(impressions.c.created_at.desc())
            .limit(1)
        ).scalar_one_or_none()
    return float(first), before


def clicked_lists_by_bundle(
    engine: Engine, versions: Sequence[str], since: float, bucket_s: float
) -> list[tuple[str, int, int, int]]:
    """Per bundle version and time bucket (since `since`): (version, bucket, lists, lists with an attributed click),
    aggregated in the database (the guard reads this every minute, whatever the traffic)."""
    clicked = (
        sa.exists()
        .where(events.c.request_id == impressions.c.request_id, events.c.event_type == "click")
        .correlate(impressions)
    )  # per list, one probe of ix_events_request_id
    bucket = sa.cast(sa.func.floor((impressions.c.created_at - since) / bucket_s), sa.Integer).label("bucket")
    query = (
        sa.select(
            impressions.c.bundle_version,
            bucket,
            sa.func.count(),
            sa.func.sum(sa.case((clicked, 1), else_=0)),
        )
        .where(impressions.c.bundle_version.in_(list(versions)), impressions.c.created_at >= since)
        .group_by(impressions.c.bundle_version, bucket)
        .order_by(bucket)
    )
    with engine.connect() as connection:
        return [(str(v), int(b), int(n), int(c)) for v, b, n, c in connection.execute(query)]
