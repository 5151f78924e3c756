"""Which errors mean "a dependency is down or too slow to answer", translated at the
clients' boundary into the core's tree (``celeriac.errors.Unavailable``).

Redis: connection errors (refused, reset, still loading its data) and timeouts.
The store: SQLAlchemy's ``OperationalError`` (PostgreSQL unreachable, too many
connections, a statement or lock timeout, SQLite's "database is locked"), the pool's
timeout waiting for a connection, and any DBAPI error that invalidated its
connection. A caller that gets ``None`` back has a bug on its hands, not an outage.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc

from celeriac.errors import RedisUnavailable, StoreUnavailable, Unavailable


def as_unavailable(error: BaseException) -> Unavailable | None:
    """The outage ``error`` stands for, or None when it is not one."""
    if isinstance(error, Unavailable):
        return error
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        return RedisUnavailable()
    if isinstance(error, sa_exc.OperationalError | sa_exc.TimeoutError):
        return StoreUnavailable()
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return StoreUnavailable()
    return None
