"""Schema migrations: Alembic, configured here so that nothing outside the package
(no alembic.ini) is needed at run time.

``upgrade`` brings a database to the newest revision, whatever it starts as:

- empty: every revision runs, from the baseline ``0001``;
- made by ``create_all`` before migrations existed (tables, no ``alembic_version``):
  stamped at ``0001`` first, then upgraded. Revision ``0002`` is written to meet
  such databases half-way (see its docstring), and afterwards every table and
  column the models declare is checked to be there, so a database older than the
  baseline fails loudly at start-up instead of at its first query;
- already under Alembic: upgraded if behind, otherwise left alone.

The caller (``Database.create_schema``) passes one connection inside one
transaction that already holds the migration lock; both backends have
transactional DDL, so an upgrade that fails half-way leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from celeriac.errors import SchemaError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema as create_all made it at commit 6a2f9cc
VERSION_TABLE = "alembic_version"

log = structlog.get_logger("celeriac.store.migrate")

__all__ = ["SchemaError", "alembic_config", "current", "differences", "head", "upgrade"]


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package ships its revisions
        raise SchemaError("no migrations found")
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; None when it has none (empty, or made before
    migrations existed)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> str | None:
    """Bring the schema to head. Returns the revision it started from (None for an
    empty database, ``"adopted"`` for one made by create_all)."""
    tables = set(inspect(connection).get_table_names())
    config = alembic_config(connection)
    before = current(connection) if VERSION_TABLE in tables else None
    adopted = before is None and "runs" in tables
    if adopted:
        before = "adopted"
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
    if adopted:
        _require_models_tables(connection)
    after = current(connection)
    if after != before:
        log.info("schema_migrated", from_revision=before, to_revision=after)
    return before


def differences(connection: Connection) -> list[Any]:
    """What autogenerate would change to make the database match the models."""
    from celeriac.store.schema import Base

    _import_models()
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    return list(compare_metadata(context, Base.metadata))


# Columns the code adds at run time where the server allows it (pgvector's column
# beside memory_chunks.embedding, see celeriac.memory.pgvector). The models do not
# declare them, and autogenerate must not take them for drift and drop them.
RUNTIME_COLUMNS = frozenset({("memory_chunks", "embedding_vec")})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter for autogenerate: everything but RUNTIME_COLUMNS."""
    if type_ == "column" and reflected and compare_to is None:
        return (obj.table.name, name) not in RUNTIME_COLUMNS
    return True


def _import_models() -> None:
    # The modules that declare tables beyond celeriac.store.schema (see env.py).
    import celeriac.webhooks.store  # noqa: F401


def _require_models_tables(connection: Connection) -> None:
    missing = [_describe(diff) for diff in _flatten(differences(connection))
               if diff[0] in ("add_table", "add_column")]
    if missing:
        raise SchemaError(
            "this database was made by a Celeriac older than its migrations' baseline "
            f"and lacks {', '.join(missing)}; recreate it (or add them by hand) and "
            f"run `celeriac db upgrade`")


def _flatten(diffs: Iterable[Any]) -> Iterable[tuple[Any, ...]]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped
            yield from diff
        else:
            yield diff


def _describe(diff: tuple[Any, ...]) -> str:
    if diff[0] == "add_table":
        return f"table {diff[1].name}"
    return f"column {diff[2]}.{diff[3].name}"


def next_revision_id(context: Any, revision: Any, directives: list[Any]) -> None:
    """Alembic hook for ``alembic revision``: number revisions 0001, 0002, ...
    (unless ``--rev-id`` is given), and write nothing when autogenerate finds no
    change."""
    script = directives[0]
    options = getattr(context.config, "cmd_opts", None)
    if getattr(options, "autogenerate", False) and script.upgrade_ops.is_empty():
        directives[:] = []
        print("No changes between the models and the database; no revision written.")
        return
    if getattr(options, "rev_id", None) is None:
        numbers = [int(rev.revision) for rev in
                   ScriptDirectory.from_config(context.config).walk_revisions()
                   if rev.revision.isdigit()]
        script.rev_id = f"{max(numbers, default=0) + 1:04d}"
