"""The reaper against a real store: a step whose worker died is sent again at once,
to the queue workers read first; copies that may only be waiting behind a backlog
are re-sent with backoff, not on every pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from celeriac.clock import utcnow
from celeriac.durability.reaper import mark_sent, reap
from celeriac.execution.step_ids import new_step
from celeriac.store import Database, Run, Step


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.create_schema()
    yield database
    database.dispose()


def _add(db: Database, run_id: str, now: datetime, **fields: object) -> None:
    with db.session() as s:
        s.add(Run(id=run_id, agent="default", agent_version="1", model="m", input="hi",
                  status="running", priority="low", priority_level=1,
                  created_at=now - timedelta(minutes=5), updated_at=now))
        step = new_step(run_id, turn=0, kind="llm", name="m", index=0,
                        now=now - timedelta(seconds=100))
        for name, value in fields.items():
            setattr(step, name, value)
        s.add(step)


def _set(db: Database, step_id: str, **fields: object) -> None:
    with db.session() as s:
        step = s.get(Step, step_id)
        assert step is not None
        for name, value in fields.items():
            setattr(step, name, value)


def test_an_expired_lease_is_sent_again_at_once_to_the_first_queue(db: Database) -> None:
    now = utcnow()
    lease_until = now - timedelta(seconds=5)  # its worker died 5 s ago
    _add(db, "r1", now, status="running", deliveries=1, lease_until=lease_until,
         sent_at=now - timedelta(seconds=50))
    first = reap(db)
    assert [(d.step_id, d.queue) for d in first] == [("r1-0-llm", "high")]  # run is "low"
    mark_sent(db, [d.step_id for d in first])
    # Its copy is queued: the next passes leave it alone...
    assert reap(db) == []
    # ...until the copy has waited recovery_resend_s unclaimed (it may be lost too).
    _set(db, "r1-0-llm", sent_at=lease_until + timedelta(seconds=1))
    assert reap(db) == []  # 4 s < 10 s
    assert [d.step_id for d in reap(db, recovery_resend_s=3)] == ["r1-0-llm"]


def test_copies_of_a_queued_step_back_off(db: Database) -> None:
    now = utcnow()
    # Created 100 s ago; its last copy was sent 40 s ago, when it had waited 60 s.
    _add(db, "r2", now, sent_at=now - timedelta(seconds=40))
    assert reap(db) == []  # 40 s < 60 s: perhaps still waiting behind a backlog
    _set(db, "r2-0-llm", sent_at=now - timedelta(seconds=70))  # had waited 30 s
    assert [(d.step_id, d.queue) for d in reap(db)] == [("r2-0-llm", "low")]


def test_a_step_never_sent_goes_to_the_first_queue(db: Database) -> None:
    now = utcnow()
    _add(db, "r3", now)  # created 100 s ago, never sent: its sender died
    assert [(d.step_id, d.queue) for d in reap(db)] == [("r3-0-llm", "high")]
