"""A fresh, empty store of either kind, for tests that need their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.services import IN_CI, create_postgres_database, drop_postgres_database


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """``kind`` "sqlite" (a file in ``directory``) or "postgres" (a throwaway
    database: skipped locally without a server, a failure in CI)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
        return
    created = create_postgres_database()
    if created is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL not available locally")
    try:
        yield created[0]
    finally:
        drop_postgres_database(created[1])
