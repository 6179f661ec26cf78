"""The system of record's schema (SQLAlchemy Core tables; migrated by Alembic, `service/store/migrations`), its
engine with bounded waits, and `migrate`, which brings a database to the latest revision."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=True, unique=True),  # the client's, for idempotent retries
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("item_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(16), nullable=False),
    sa.Column("timestamp", sa.Float(), nullable=True),  # the client's time, if it sent one
    sa.Column("received_at", sa.Float(), nullable=False),
    sa.Column("rating", sa.Float(), nullable=True),  # an imported interaction's rating, if it had one
    sa.Column("request_id", sa.String(64), nullable=True, index=True),  # the list it answers (an impression)
    sa.Index("ix_events_user_id_id", "user_id", "id"),  # a user's latest events: the end of one index range
)
users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("first_seen", sa.Float(), nullable=False),
    sa.Column("last_seen", sa.Float(), nullable=False),
    sa.Column("attributes", sa.Text(), nullable=False, server_default="{}"),  # JSON: imported categorical columns
)
items = sa.Table(
    "items",
    metadata,
    sa.Column("item_id", sa.String(128), primary_key=True),
    sa.Column("title", sa.Text(), nullable=False),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
    sa.Column("categories", sa.Text(), nullable=False, server_default=""),  # '|'-separated
    sa.Column("year", sa.Integer(), nullable=True),
    sa.Column("attributes", sa.Text(), nullable=False, server_default="{}"),  # JSON: other columns
    sa.Column("source", sa.String(16), nullable=False),  # import | live
    sa.Column("created_at", sa.Float(), nullable=False),
)
live_items = sa.Table(
    "live_items",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("item_id", sa.String(128), nullable=False, unique=True),
    sa.Column("record", sa.Text(), nullable=False),  # JSON: what the client sent
    sa.Column("created_at", sa.Float(), nullable=False),
)
impressions = sa.Table(  # every list served (service.experiments.impressions)
    "impressions",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("bundle_version", sa.String(128), nullable=False),
    sa.Column("experiment", sa.String(64), nullable=True),
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("items", sa.Text(), nullable=False),  # JSON: the item ids, in the order shown
    sa.Column("propensities", sa.Text(), nullable=True),  # JSON: each slot's probability under the policy
    sa.Column("created_at", sa.Float(), nullable=False, index=True),
    sa.Index("ix_impressions_experiment_created_at", "experiment", "created_at"),
    sa.Index("ix_impressions_bundle_version_created_at", "bundle_version", "created_at"),
)
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("variants", sa.Text(), nullable=False),  # JSON: [{name, share, settings...}]
    sa.Column("status", sa.String(16), nullable=False),  # created | running | stopped
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=True),
    sa.Column("stopped_at", sa.Float(), nullable=True),
)
deletions = sa.Table(
    "deletions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("deleted_at", sa.Float(), nullable=False),
    sa.Column("events_deleted", sa.Integer(), nullable=False),
)


def open_engine(url: str, timeout_s: float) -> Engine:
    """An engine for `url` with bounded waits: SQLite's busy timeout (and WAL, so readers never wait for a
    writer), PostgreSQL's connect and statement timeouts. A relative SQLite path's folder is created."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _: object) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        ms = int(timeout_s * 1000)
        options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        # No ping before each use (a round trip per call, on the event write path too): a connection the server
        # dropped (a restart) fails the one call that meets it (RecordsUnavailable: a 503 or a fallback), and
        # SQLAlchemy then replaces every pooled connection as old as it (a disconnect invalidates the pool).
        return sa.create_engine(
            url,
            pool_pre_ping=False,
            pool_recycle=3600,  # nor one idle long enough for a firewall or proxy to drop it silently
            pool_timeout=timeout_s,
            connect_args={"connect_timeout": max(1, int(timeout_s)), "options": options},
        )
    return sa.create_engine(url, pool_pre_ping=True)


MIGRATION_LOCK = 727_274_001  # PostgreSQL advisory lock key: one migration at a time across processes and pods


def migrate(url: str) -> None:
    """Bring the database's schema to the latest Alembic revision (`service/store/migrations`). Safe when several
    processes or replicas start at once: PostgreSQL runs them one after the other under an advisory lock, SQLite
    under an exclusive lock on a file beside the database; the later ones find the schema at head."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                connection.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK)))
                try:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
                    connection.commit()
                finally:
                    connection.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK)))
                    connection.commit()
            return
        database = sa.make_url(url).database or ""
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            with open(f"{database}.migrate.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                command.upgrade(config, "head")
            return
        command.upgrade(config, "head")
    finally:
        engine.dispose()
