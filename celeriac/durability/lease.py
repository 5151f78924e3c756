"""Step leases, kept alive by one heartbeat thread per process.

A running step holds a short lease (``lease_until``). While its worker lives, one
background thread extends the leases of every step the process is running, in a
single UPDATE every third of the lease. When the worker dies (SIGKILL, OOM, a lost
host) the heartbeat stops, the lease runs out within seconds, and the reaper hands
the step back: Celery's visibility timeout (an hour) is only the backstop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import structlog
from sqlalchemy import update

from celeriac.clock import utcnow
from celeriac.store import Database, Step

log = structlog.get_logger("celeriac.durability.lease")


class LeaseKeeper:
    def __init__(self, db: Database, lease: timedelta):
        self.db = db
        self.lease = lease
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @contextmanager
    def held(self, step_id: str) -> Iterator[None]:
        with self._lock:
            self._active[step_id] = self._active.get(step_id, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._beat, name="celeriac-lease-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active[step_id] -= 1
                if self._active[step_id] <= 0:
                    del self._active[step_id]

    def _beat(self) -> None:
        interval = self.lease.total_seconds() / 3
        while not self._wake.wait(interval):
            with self._lock:
                ids = list(self._active)
            if not ids:
                continue
            try:
                with self.db.session() as s:
                    s.execute(
                        update(Step)
                        .where(Step.id.in_(ids), Step.status == "running")
                        .values(lease_until=utcnow() + self.lease)
                    )
            except Exception as exc:  # the next beat tries again; leases are generous
                log.warning("lease_heartbeat_failed", error=repr(exc), steps=len(ids))
