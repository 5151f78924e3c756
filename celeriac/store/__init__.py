"""The store: runs and their steps, in SQL (SQLite by default, PostgreSQL in
production). It is the source of truth; broker messages carry only step ids."""

from celeriac.store.database import Database
from celeriac.store.schema import Base, LedgerEntry, Run, Step, Thread

__all__ = ["Base", "Database", "LedgerEntry", "Run", "Step", "Thread"]
