"""Alembic environment: the service's own schema (service.store.schema.metadata), on the URL given by
service.store.schema.migrate (or `alembic -x url=...` with the alembic.ini at the repository root)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from service.store.schema import metadata

config = context.config
url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    given = config.attributes.get("connection")  # service.store.schema.migrate's, holding the migration lock
    if given is not None:
        context.configure(connection=given, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
