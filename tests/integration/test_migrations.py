"""Schema migrations: the migrations build exactly the models' schema; databases
made by create_all before migrations existed are adopted in place, rows kept; and
processes that start at once on a fresh database all come up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from celeriac.clock import utcnow
from celeriac.errors import SchemaError
from celeriac.store import Base, Database, Run, Thread, migrate
from tests.support.services import (
    IN_CI,
    PROJECT_DIR,
    create_postgres_database,
    drop_postgres_database,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    name = created[1]
    yield created[0].replace("postgresql://", "postgresql+psycopg://", 1)
    drop_postgres_database(name)


@pytest.fixture
def db(url: str) -> Iterator[Database]:
    database = Database(url)
    yield database
    database.dispose()


def _differences(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return migrate.differences(conn)


def test_the_migrations_build_exactly_the_models_schema(db: Database) -> None:
    """Fails when a model changes without a revision (or a revision without the
    model): `make migration m="..."` writes the missing one."""
    assert db.create_schema() is None  # an empty database
    assert db.schema_revision() == migrate.head()
    assert _differences(db) == []
    assert db.create_schema() == migrate.head()  # the next process start: nothing to do
    assert _differences(db) == []


def _legacy(db: Database, era: str) -> None:
    """A database as create_all left it, with no alembic_version table. ``baseline``:
    the code of 6a2f9cc (the schema of revision 0001); ``between``: code from after
    threads were added, upgrading such a database (create_all added the table, not
    the columns); ``latest``: create_all of today's models on an empty database."""
    if era == "latest":
        Base.metadata.create_all(db.engine)
    else:
        with db.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), migrate.BASELINE)
            conn.execute(text("DROP TABLE alembic_version"))
        if era == "between":
            Thread.__table__.create(db.engine)  # type: ignore[attr-defined]
    now = utcnow()
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO runs (id, tenant, agent, agent_version, model, status, priority,"
                 " priority_level, input, max_steps, max_tokens, budget_usd, metadata,"
                 " steps_done, pending_tools, input_tokens, output_tokens, cost_nanos,"
                 " version, created_at, updated_at"
                 + (", thread_seq" if era == "latest" else "") + ")"
                 " VALUES ('old-run', 'acme', 'default', '1', 'm', 'completed', 'normal', 5,"
                 " 'What is 2 + 2?', 10, 1024, 1.0, '{}', 1, 0, 3, 4, 5, 2, :t, :t"
                 + (", 0" if era == "latest" else "") + ")"),
            {"t": now - timedelta(days=1)},
        )


@pytest.mark.parametrize("era", ["baseline", "between", "latest"])
def test_a_database_made_before_migrations_is_upgraded_in_place(
    db: Database, era: str
) -> None:
    _legacy(db, era)
    assert "alembic_version" not in inspect(db.engine).get_table_names()

    assert db.create_schema() == "adopted"

    assert db.schema_revision() == migrate.head()
    assert _differences(db) == []
    columns = {c["name"] for c in inspect(db.engine).get_columns("runs")}
    assert {"thread_id", "thread_seq"} <= columns
    with db.reader() as s:
        run = s.get(Run, "old-run")
        assert run is not None
        assert (run.tenant, run.input, run.cost_nanos) == ("acme", "What is 2 + 2?", 5)
        assert (run.thread_id, run.thread_seq) == (None, 0)
    # and it works as a store: a new run on a thread
    with db.session() as s:
        s.add(Thread(id="t1", tenant="acme", turns=1, created_at=utcnow(),
                     updated_at=utcnow()))
        s.add(Run(id="new-run", agent="default", agent_version="1", model="m", input="hi",
                  thread_id="t1", thread_seq=1, created_at=utcnow(), updated_at=utcnow()))
    assert db.create_schema() == migrate.head()


def test_a_database_older_than_the_baseline_is_refused_with_a_clear_error(
    db: Database,
) -> None:
    _legacy(db, "baseline")
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE steps DROP COLUMN sent_at"))
    with pytest.raises(SchemaError, match=r"steps\.sent_at"):
        db.create_schema()
    # and nothing was half-done: the upgrade's transaction was rolled back
    assert "alembic_version" not in inspect(db.engine).get_table_names()
    assert "threads" not in inspect(db.engine).get_table_names()


_START_UP = """
import sys, time
from pathlib import Path
from celeriac.store import Database
url, go = sys.argv[1], Path(sys.argv[2])
db = Database(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
db.create_schema()
print("started at", db.schema_revision())
"""


def test_processes_starting_at_once_on_a_fresh_database_all_come_up(
    url: str, tmp_path: Path
) -> None:
    """What `make run` does on a fresh checkout: web, worker, beat and exporter start
    together, each migrating the empty store."""
    go = tmp_path / "go"
    launched = [
        subprocess.Popen([sys.executable, "-c", _START_UP, url, str(go)], cwd=PROJECT_DIR,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for p in launched:  # every interpreter has imported everything: release them at once
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
    go.touch()
    outcomes = [p.communicate(timeout=120) for p in launched]
    for p, (out, err) in zip(launched, outcomes, strict=True):
        assert p.returncode == 0, err
        assert out.splitlines()[-1] == f"started at {migrate.head()}", out + err
    database = Database(url)
    try:
        assert _differences(database) == []
        with database.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [v for (v,) in versions] == [migrate.head()]
    finally:
        database.dispose()


def test_the_cli_upgrades_and_reports_the_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import main

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["db", "current"]) == 1
    assert f"head is {migrate.head()}" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out  # after the schema_migrated log line
    assert out.splitlines()[-1] == f"at {migrate.head()} (was empty)"
    assert main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{migrate.head()} (head)"


def test_ledger_rows_of_a_step_paid_twice_are_kept_and_marked(db: Database) -> None:
    """0004 makes ledger.step_id unique; the rows of a step paid twice before the
    journal existed are money spent, so they stay, renamed rather than dropped."""
    with db.engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0003")
        for n, step in enumerate(["s-0-llm", "s-0-llm", "t-0-llm", "s-0-llm"]):
            conn.execute(text(
                "INSERT INTO ledger (step_id, reservation_id, run_id, tenant, day, model, "
                "provider, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, "
                "cost_nanos, cached, price_version, created_at) VALUES (:step, :rid, 'r', "
                "'default', '2026-11-25', 'm', 'p', 1, 1, 0, 0, 100, false, '1', :at)"
            ), {"step": step, "rid": f"res-{n}", "at": utcnow()})
    assert db.create_schema() == "0003"
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT step_id, cost_nanos FROM ledger ORDER BY id")).all()
    assert [r[0] for r in rows] == ["s-0-llm", "s-0-llm#2", "t-0-llm", "s-0-llm#3"]
    assert sum(r[1] for r in rows) == 400  # not a nano-dollar lost
    assert _differences(db) == []
