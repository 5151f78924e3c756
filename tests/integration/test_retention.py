"""Retention: finished runs older than the setting are deleted with their steps;
recent and unfinished runs stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from celeriac.clock import utcnow
from celeriac.reaper import cleanup
from celeriac.steps import new_step
from celeriac.store import Database, Run, Step


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
