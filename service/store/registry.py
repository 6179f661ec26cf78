"""The bundle registry in the system of record: which bundles exist, how each fared at the quality gate, and the
one that is published. `python -m model_export retrain` registers and publishes, `publish` and `rollback` move
the published mark, and every replica follows it (`AppState.follow_published_bundle`): the database, not a
symlink on one pod's disk, says what is served.

Statuses: `published` (one at most), `retired` (published before), `rejected` (failed the gate), `rolled_back`
(published, then rolled back). Publishing and rolling back are one transaction each.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service.store.schema import metadata

bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("data_window", sa.Text(), nullable=False),
    sa.Column("metrics", sa.Text(), nullable=False),
    sa.Column("gate", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("published_at", sa.Float(), nullable=True),
)
retrains = sa.Table(
    "retrains",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("finished_at", sa.Float(), nullable=False),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("version", sa.String(128), nullable=True),
    sa.Column("message", sa.Text(), nullable=False, server_default=""),
)

STATUSES = ("published", "retired", "rejected", "rolled_back")


class RegistryError(Exception):
    """A publish or rollback that cannot be done (unknown version, nothing to roll back to, a rejected bundle
    without the override)."""


@dataclass(frozen=True, slots=True)
class Entry:
    version: str
    created_at: float
    data_window: dict[str, Any]
    metrics: dict[str, Any]
    gate: str
    status: str
    published_at: float | None


@dataclass(frozen=True, slots=True)
class Retrain:
    started_at: float
    finished_at: float
    result: str
    version: str | None
    message: str


def _entry(row: Any) -> Entry:
    return Entry(
        row.version,
        row.created_at,
        json.loads(row.data_window),
        json.loads(row.metrics),
        row.gate,
        row.status,
        row.published_at,
    )


def register(
    engine: sa.Engine,
    version: str,
    data_window: dict[str, Any],
    metrics: dict[str, Any],
    gate: str,
    *,
    publish: bool,
) -> None:
    """Record a new bundle; published at once (in the same transaction) if `publish`, else rejected."""
    now = time.time()
    with engine.begin() as c:
        if publish:
            c.execute(bundles.update().where(bundles.c.status == "published").values(status="retired"))
        c.execute(
            bundles.insert().values(
                version=version,
                created_at=now,
                data_window=json.dumps(data_window),
                metrics=json.dumps(metrics),
                gate=gate,
                status="published" if publish else "rejected",
                published_at=now if publish else None,
            )
        )


def published(engine: sa.Engine) -> Entry | None:
    with engine.connect() as c:
        row = c.execute(sa.select(bundles).where(bundles.c.status == "published")).first()
    return None if row is None else _entry(row)


def entries(engine: sa.Engine) -> list[Entry]:
    """Every registered bundle, newest first."""
    with engine.connect() as c:
        return [_entry(r) for r in c.execute(sa.select(bundles).order_by(bundles.c.created_at.desc()))]


def publish(engine: sa.Engine, version: str, *, override_gate: bool = False) -> Entry | None:
    """Publish `version` (the one published before becomes `retired`); returns that one. A bundle the gate
    rejected needs `override_gate` (its gate is then recorded as `overridden`)."""
    with engine.begin() as c:
        row = c.execute(sa.select(bundles).where(bundles.c.version == version)).first()
        if row is None:
            raise RegistryError(f"no bundle {version!r} in the registry (python -m model_export bundles lists them)")
        if row.status == "published":
            return _entry(row)
        if row.gate == "failed" and not override_gate:
            raise RegistryError(f"{version} failed the quality gate; publish it anyway with --override-gate")
        before = c.execute(sa.select(bundles).where(bundles.c.status == "published")).first()
        c.execute(bundles.update().where(bundles.c.status == "published").values(status="retired"))
        gate = "overridden" if row.gate == "failed" else row.gate
        update = bundles.update().where(bundles.c.version == version)
        c.execute(update.values(status="published", published_at=time.time(), gate=gate))
    return None if before is None else _entry(before)


def rollback(engine: sa.Engine) -> tuple[Entry, Entry]:
    """Mark the published bundle `rolled_back` and publish the one published before it (the latest `retired`).
    Returns (rolled back, now published)."""
    with engine.begin() as c:
        current = c.execute(sa.select(bundles).where(bundles.c.status == "published")).first()
        if current is None:
            raise RegistryError("no bundle is published: nothing to roll back")
        previous = c.execute(
            sa.select(bundles).where(bundles.c.status == "retired").order_by(bundles.c.published_at.desc()).limit(1)
        ).first()
        if previous is None:
            raise RegistryError(f"{current.version} is the only bundle ever published: nothing to roll back to")
        c.execute(bundles.update().where(bundles.c.version == current.version).values(status="rolled_back"))
        now = time.time()
        c.execute(
            bundles.update().where(bundles.c.version == previous.version).values(status="published", published_at=now)
        )
        after = c.execute(sa.select(bundles).where(bundles.c.version == previous.version)).one()
    return _entry(current), _entry(after)


def record_retrain(engine: sa.Engine, started_at: float, result: str, version: str | None, message: str) -> None:
    with engine.begin() as c:
        c.execute(
            retrains.insert().values(
                started_at=started_at, finished_at=time.time(), result=result, version=version, message=message[:2000]
            )
        )


def last_retrains(engine: sa.Engine, n: int = 20) -> list[Retrain]:
    """The latest `n` retrain runs, newest first."""
    with engine.connect() as c:
        rows = c.execute(sa.select(retrains).order_by(retrains.c.id.desc()).limit(n)).all()
    return [Retrain(r.started_at, r.finished_at, r.result, r.version, r.message) for r in rows]
