"""Retention: finished runs older than the setting are deleted with their steps;
recent and unfinished runs stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from celeriac.clock import utcnow
from celeriac.durability.reaper import cleanup
from celeriac.execution.step_ids import new_step
from celeriac.store import Database, Run, Step, Thread
from celeriac.store.schema import MemoryChunk


def _run(db: Database, run_id: str, status: str, age_days: float) -> None:
    moment = utcnow() - timedelta(days=age_days)
    with db.session() as s:
        s.add(Run(id=run_id, agent="default", agent_version="1", model="m", status=status,
                  input="x", created_at=moment, updated_at=moment,
                  finished_at=moment if status != "running" else None))
        s.add(new_step(run_id, turn=0, kind="llm", name="m", index=0, now=moment))


def test_cleanup_deletes_only_old_finished_runs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.create_schema()
    _run(db, "old-done", "completed", 40)
    _run(db, "old-failed", "failed", 31)
    _run(db, "recent", "completed", 2)
    _run(db, "old-running", "running", 40)
    assert cleanup(db, retention_days=30) == 2
    with db.reader() as s:
        assert {r.id for r in s.query(Run)} == {"recent", "old-running"}
        assert {st.run_id for st in s.query(Step)} == {"recent", "old-running"}
    assert cleanup(db, retention_days=30) == 0


def _thread(db: Database, thread_id: str, age_days: float) -> None:
    moment = utcnow() - timedelta(days=age_days)
    with db.session() as s:
        s.add(Thread(id=thread_id, tenant="default", turns=0, created_at=moment,
                     updated_at=moment))


def _on_thread(db: Database, run_id: str, thread_id: str, seq: int) -> None:
    with db.session() as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.thread_id, run.thread_seq = thread_id, seq


def test_a_thread_goes_as_a_whole_once_all_its_turns_are_old(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    db.create_schema()
    _thread(db, "stale", 40)
    _run(db, "stale-1", "completed", 45)
    _run(db, "stale-2", "failed", 40)
    _thread(db, "alive", 35)
    _run(db, "alive-1", "completed", 40)  # old, but its thread has a recent turn
    _run(db, "alive-2", "completed", 1)
    for run_id, thread_id, seq in [("stale-1", "stale", 1), ("stale-2", "stale", 2),
                                   ("alive-1", "alive", 1), ("alive-2", "alive", 2)]:
        _on_thread(db, run_id, thread_id, seq)
    with db.session() as s:
        for n, (run_id, thread_id) in enumerate([("stale-1", "stale"), ("alive-1", "alive")]):
            s.add(MemoryChunk(tenant="default", thread_id=thread_id, run_id=run_id, seq=n,
                              text="x", model="m", embedding=b"", created_at=utcnow()))
    assert cleanup(db, retention_days=30) == 2
    with db.reader() as s:
        assert {t.id for t in s.query(Thread)} == {"alive"}
        # What recall remembered of the deleted thread is gone too.
        assert {c.thread_id for c in s.query(MemoryChunk)} == {"alive"}
        assert {r.id for r in s.query(Run)} == {"alive-1", "alive-2"}
        assert {st.run_id for st in s.query(Step)} == {"alive-1", "alive-2"}
