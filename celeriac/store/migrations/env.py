"""Alembic's environment: run by ``celeriac.store.migrate`` (every process start,
``celeriac db upgrade``) and by the ``alembic`` command (developers, ``alembic.ini``).

The target metadata must hold every table, so this imports every module that
declares one. A model module that is not imported here is invisible to
autogenerate, and its table would be dropped by the next generated revision.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

import celeriac.store.schema
import celeriac.webhooks.store  # WebhookDelivery
from celeriac.store.migrate import include_object, next_revision_id

target_metadata = celeriac.store.schema.Base.metadata
config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # Batch operations are plain ALTERs on PostgreSQL and a table copy on SQLite,
        # which cannot alter or drop most things in place: render them always, so a
        # revision generated against either database runs on both.
        render_as_batch=True,
        compare_type=True,
        include_object=include_object,
        process_revision_directives=next_revision_id,
    )
    with context.begin_transaction():
        context.run_migrations()


# celeriac.store.migrate hands over a connection that already holds the migration
# lock, inside the transaction that the whole upgrade commits or rolls back with.
given = config.attributes.get("connection")
if given is not None:
    run(given)
elif context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    # The alembic command: `-x url=...` or alembic.ini's scratch database.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=... or set sqlalchemy.url in alembic.ini")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
