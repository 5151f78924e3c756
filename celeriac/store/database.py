"""Engine and session factory, with the SQLite settings that make it safe for
several processes (WAL, a busy timeout, and write transactions that take the lock
up front so two writers never deadlock on a lock upgrade), and the lock that
migrations run under. Every free-text and JSON column written through a session
passes the Redactor first: whatever path outside text takes, no secret is stored."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Text, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Mapper, Session, sessionmaker
from sqlalchemy.pool import NullPool

from celeriac.errors import StoreUnavailable
from celeriac.redaction import NO_SECRETS, Redactor
from celeriac.store import migrate

# Every process migrates at start-up; the first takes the lock, the others wait for
# it and then find the schema at head. On SQLite the wait is the busy timeout of the
# migrating connection, so it is long enough for a migration that copies a table.
MIGRATION_LOCK_ID = 4242001  # pg_advisory_xact_lock key
MIGRATION_WAIT_S = 600


SQLITE_BUSY_S = 30  # how long an unbounded SQLite writer waits for the write lock


@dataclass(frozen=True)
class Timeouts:
    """How long one connection attempt, one statement and one lock wait may take
    (None: as long as it takes). The web tier bounds all three, so that a dead or
    locked store turns into a quick 503 instead of a hung request; see
    ``Services.request_timeouts``. PostgreSQL enforces them server-side
    (``statement_timeout``, ``lock_timeout``). SQLite's statements run in process;
    its lock wait (the busy timeout, and the in-process write turn) is bounded by
    the statement timeout when there is one (see below)."""

    connect_s: float | None = None
    statement_s: float | None = None
    lock_s: float | None = None


class Database:
    def __init__(self, url: str, *, echo: bool = False, timeouts: Timeouts | None = None,
                 redactor: Redactor = NO_SECRETS):
        parsed = make_url(url)
        self.url = url
        self.redactor = redactor
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._in_memory = self.is_sqlite and parsed.database in (None, "", ":memory:")
        self.timeouts = timeouts or Timeouts()
        lock_s = self.timeouts.lock_s
        if self.is_sqlite and self.timeouts.statement_s is not None:
            # One file lock for every writer, held for a whole transaction: waiting
            # for it is ordinary contention, so a SQLite writer may wait as long as a
            # statement may run (a PostgreSQL lock wait means a conflict).
            lock_s = self.timeouts.statement_s
        self._lock_wait_s = lock_s
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            busy_s = lock_s if lock_s is not None else SQLITE_BUSY_S
            kwargs["connect_args"] = {"timeout": busy_s, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20,
                          connect_args=_postgres_connect_args(self.timeouts))
            if lock_s is not None:  # a request does not queue for a pooled connection
                kwargs["pool_timeout"] = lock_s
        self.engine: Engine = create_engine(url, **kwargs)
        self.read_engine: Engine = self.engine
        if self.is_sqlite:
            # Writers take the lock at BEGIN; readers get their own engine with deferred
            # transactions, so that WAL lets them read while a write is under way.
            self.read_engine = create_engine(url, **kwargs)
            busy_ms = int(1000 * (lock_s if lock_s is not None else SQLITE_BUSY_S))
            _configure_sqlite(self.engine, immediate=True, busy_timeout_ms=busy_ms)
            _configure_sqlite(self.read_engine, immediate=False, busy_timeout_ms=busy_ms)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _scrub_before_flush(self._sessions, redactor)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken
        # does not queue: it sleeps and retries (1, 2, 5, 10, 15, 20, 25... ms, the
        # busy handler's schedule), so under a burst of writes most of a request's
        # time went to oversleeping a 1 ms transaction. Threads of one process queue
        # here instead and start the moment the previous write ends; the busy
        # timeout remains for writers in other processes. (PostgreSQL: no lock.)
        self._write_turn: threading.RLock | None = threading.RLock() if self.is_sqlite else None

    def create_schema(self) -> str | None:
        """Upgrade the schema to the newest migration (creating it in an empty
        database, adopting one made before migrations existed). Every process calls
        this at start-up; see ``celeriac.store.migrate``. Returns the revision it
        started from."""
        with self._migration_lock() as conn:
            return migrate.upgrade(conn)

    def schema_revision(self) -> str | None:
        """The database's migration revision (None: empty, or never migrated)."""
        with self.engine.connect() as conn:
            return migrate.current(conn)

    @contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        """One transaction that holds the migration lock until it commits: a
        PostgreSQL advisory lock, or SQLite's write lock (BEGIN IMMEDIATE). Both
        have transactional DDL, so a failed upgrade changes nothing."""
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                # A migration may wait for another process's and copy tables: the
                # request timeouts of a web process do not apply to it.
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                conn.execute(text("SET LOCAL lock_timeout = 0"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                yield conn
            return
        if self._in_memory:  # one process, and the engines must share the database
            with self.engine.begin() as conn:
                yield conn
            return
        # A connection of its own, thrown away afterwards: foreign keys off (a batch
        # migration that copies `runs` must not cascade-delete its steps when it
        # drops the old table) and a long busy timeout (see MIGRATION_WAIT_S).
        engine = create_engine(self.url, poolclass=NullPool,
                               connect_args={"timeout": MIGRATION_WAIT_S})
        _configure_sqlite(engine, immediate=True, foreign_keys=False,
                          busy_timeout_ms=MIGRATION_WAIT_S * 1000)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        with self._take_write_turn():
            session = self._sessions()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextmanager
    def _take_write_turn(self) -> Iterator[None]:
        if self._write_turn is None:
            yield
            return
        wait_s = self._lock_wait_s
        if not self._write_turn.acquire(timeout=-1 if wait_s is None else wait_s):
            raise StoreUnavailable("the store is busy; retry later")
        try:
            yield
        finally:
            self._write_turn.release()

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only unit of work that never waits for SQLite's write lock."""
        session = self._read_sessions()
        try:
            yield session
        finally:
            # close() ends the transaction but, unlike rollback(), keeps loaded
            # attributes, so detached objects stay readable after the block.
            session.close()

    def serialize(self, session: Session, name: str) -> None:
        """Hold a lock named ``name`` until ``session``'s transaction ends, so that
        transactions checking and then acting on a shared condition (a count, say)
        run one after another. SQLite writers are already serialized by BEGIN
        IMMEDIATE; PostgreSQL takes a transaction-scoped advisory lock."""
        if not self.is_sqlite:
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})

    def ping(self) -> None:
        """Read a row of ``runs``: a lock on the table that every request needs blocks
        this too (up to the lock timeout), where ``SELECT 1`` would answer."""
        with self.read_engine.connect() as conn:
            conn.execute(text("SELECT id FROM runs LIMIT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


def _scrub_before_flush(sessions: sessionmaker[Session], redactor: Redactor) -> None:
    """Redact the Text and JSON attributes of new and changed rows (String columns
    are ids, codes and names: left alone, so a key never changes)."""
    columns: dict[Mapper[Any], list[str]] = {}

    def scrubbed_keys(mapper: Mapper[Any]) -> list[str]:
        keys = columns.get(mapper)
        if keys is None:
            keys = columns[mapper] = [
                attr.key for attr in mapper.column_attrs
                if isinstance(attr.columns[0].type, Text | JSON)
            ]
        return keys

    @event.listens_for(sessions, "before_flush")
    def _scrub(session: Session, _context: Any, _instances: Any) -> None:
        for obj in (*session.new, *session.dirty):
            state = inspect(obj)
            for key in scrubbed_keys(state.mapper):
                if not state.attrs[key].history.has_changes():
                    continue
                value = getattr(obj, key)
                clean = redactor.value(value)
                if clean is not value:
                    setattr(obj, key, clean)


def _postgres_connect_args(timeouts: Timeouts) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if timeouts.connect_s is not None:
        args["connect_timeout"] = max(2, math.ceil(timeouts.connect_s))  # libpq's minimum
    options = []
    if timeouts.statement_s is not None:
        options.append(f"-c statement_timeout={int(timeouts.statement_s * 1000)}")
    if timeouts.lock_s is not None:
        options.append(f"-c lock_timeout={int(timeouts.lock_s * 1000)}")
    if options:
        args["options"] = " ".join(options)
    return args


def _configure_sqlite(
    engine: Engine, *, immediate: bool, foreign_keys: bool = True, busy_timeout_ms: int = 30000
) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, issue BEGIN (see "begin" below).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
