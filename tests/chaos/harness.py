"""The chaos run's moving parts: worker processes and warm standbys, kills (by
failpoint and from outside), and watches on the tasks each kill interrupted."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from celeriac.store import Database, Run, Step
from tests.support.services import (
    WorkerProcess,
    start_worker,
)

CHAOS_REDIS_DB = 8
TASKS = 200
KILLS = 50
WORKERS = 2
CONCURRENCY = 6
LATENCY_MS = 300
TOOL_WORK_MS = 150
SUBMIT_EVERY_S = 0.4
# Outside kills: a random gap, and only workers that have done some work since
# they took over, so that each runs steps before it dies.
OUTSIDE_KILL_GAP_S = (1.0, 4.0)
# A worker process takes seconds to start (many more on a loaded machine), so dead
# workers are replaced by standbys started ahead, listening on a queue no step is
# sent to, that take over the step queues on a control message. Two workers
# consume steps at any time; the standbys consume nothing until then.
STANDBYS = 2
STEP_QUEUES = ("high", "default", "low")
RESUME_LIMIT_S = 60.0
RUN_DEADLINE_S = 900.0
# A request is "on the wire at a kill" when the kill came between its sending and
# the moment its answer could have been journaled. The simulator logs when it read
# the request, which can be a moment after a sender killed right after sending (seen:
# 3 ms), and the answer takes the simulated latency plus the time a worker thread
# starved of CPU on a busy machine needs to journal it.
SENT_BEFORE_READ_S = 0.5
IN_FLIGHT_SLACK_S = 1.5
FAILPOINTS = ("before_call=0.005,after_call=0.02,before_tool=0.005,after_tool=0.03,"
              "after_record=0.005,before_ack=0.005")
LAST_RUN = Path(__file__).with_name("last-run.json")


_RECEIVED = re.compile(r"Task celeriac\.(?:llm|tool)_step\[([^\]]+)\] received")
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Kill:
    at: float  # unix time
    how: str  # "outside", or the failpoint's name
    step: str = ""


@dataclass
class Slot:
    worker: WorkerProcess
    failpoints: bool
    took_over: int = 0  # length of its log when it took over the step queues
    killed_at: float | None = None  # set when this test killed it


@dataclass
class Watch:
    """A task interrupted by a kill: it *resumes* when a live worker takes its
    interrupted step over (or claims the step the dead worker never sent), and
    *progresses* when one more of its steps completes."""

    run_id: str
    kill_at: float
    steps_done: int
    # step id -> its recoveries at the kill (a running step) or None (a pending one)
    steps: dict[str, int | None]
    resumed: bool = False


@dataclass
class Chaos:
    env: dict[str, str]
    tmp: Path
    db: Database
    rng: random.Random
    control: Any  # the Celery app, for add_consumer
    slots: list[Slot] = field(default_factory=list)
    standbys: list[Slot] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    watches: list[Watch] = field(default_factory=list)
    resumed_s: list[float] = field(default_factory=list)
    slowest: list[tuple[float, str, float]] = field(default_factory=list)  # s, run, kill
    progressed_s: list[float] = field(default_factory=list)
    unexpected_deaths: list[str] = field(default_factory=list)
    restarts: int = 0

    def start(self, queues: str = "standby") -> Slot:
        failpoints = len(self.kills) < KILLS
        env = dict(self.env, CELERIAC_FAILPOINTS=FAILPOINTS) if failpoints else self.env
        # Not waiting for its ping: the test keeps killing and watching meanwhile.
        worker = start_worker(env, self.tmp, concurrency=CONCURRENCY, queues=queues)
        return Slot(worker, failpoints)

    def take_over(self) -> Slot:
        """A ready standby (with failpoints only while kills are still wanted)
        consumes the step queues from now on; a fresh worker when none is ready."""
        wanted = len(self.kills) < KILLS
        for standby in self.standbys:
            log = standby.worker.log()
            if standby.failpoints == wanted and " ready." in log \
                    and standby.worker.process.poll() is None:
                self.standbys.remove(standby)
                standby.took_over = len(log)
                for queue in STEP_QUEUES:
                    self.control.control.add_consumer(
                        queue, destination=[standby.worker.name], reply=True, timeout=5)
                self.standbys.append(self.start())
                return standby
        return self.start(",".join(STEP_QUEUES))

    def outside_kill(self) -> bool:
        ready = [s for s in self.slots if s.worker.process.poll() is None and self._warm(s)]
        if not ready:
            return False
        slot = self.rng.choice(ready)
        slot.killed_at = time.time()
        os.kill(slot.worker.process.pid, signal.SIGKILL)
        self.kills.append(Kill(slot.killed_at, "outside"))
        slot.worker.process.wait(10)
        return True

    def replace_dead(self) -> None:
        for index, slot in enumerate(self.slots):
            if slot.worker.process.poll() is None:
                continue
            if slot.killed_at is None:
                line = _failpoint_line(slot.worker)
                if line is None:
                    self.unexpected_deaths.append(slot.worker.log()[-2000:])
                    died_at = time.time()
                else:
                    self.kills.append(Kill(float(line["at"]), line["failpoint"], line["step"]))
                    died_at = float(line["at"])
            else:
                died_at = slot.killed_at
            self._watch_interrupted(slot.worker, died_at)
            self.slots[index] = self.take_over()
            self.restarts += 1
        for index, standby in enumerate(self.standbys):
            if standby.worker.process.poll() is not None:  # a standby never dies...
                self.unexpected_deaths.append(standby.worker.log()[-2000:])
                self.standbys[index] = self.start()

    def _warm(self, slot: Slot) -> bool:
        """It has run steps since it took over (a fresh worker: since it started)."""
        since = slot.worker.log()[slot.took_over:]
        return '"llm_call"' in since or '"tool_result"' in since

    def _watch_interrupted(self, worker: WorkerProcess, died_at: float) -> None:
        """Tasks the dead worker was in the middle of: a step of theirs it had
        received is still running or pending, or their newest step was never sent
        (it died between recording a step and sending the next)."""
        received = set(_RECEIVED.findall(worker.log()))
        if not received:
            return
        run_ids = {step_id.split("-")[0] for step_id in received}
        with self.db.reader() as s:
            runs = s.scalars(select(Run).where(Run.id.in_(run_ids),
                                               Run.status.not_in(TERMINAL))).all()
            for run in runs:
                newest = max(run.steps, key=lambda st: st.seq)
                marks: dict[str, int | None] = {
                    st.id: st.recoveries if st.status == "running" else None
                    for st in run.steps
                    if st.id in received and st.status in ("running", "pending")
                }
                if newest.status == "pending" and newest.sent_at is None:
                    marks[newest.id] = None
                if marks:
                    self.watches.append(Watch(run.id, died_at, run.steps_done, marks))

    def check_watches(self) -> None:
        if not self.watches:
            return
        with self.db.reader() as s:
            state = {
                run_id: (status, steps_done)
                for run_id, status, steps_done in s.execute(
                    select(Run.id, Run.status, Run.steps_done).where(
                        Run.id.in_({w.run_id for w in self.watches})
                    )
                )
            }
            step_ids = {sid for w in self.watches for sid in w.steps}
            steps = {
                sid: (status, recoveries)
                for sid, status, recoveries in s.execute(
                    select(Step.id, Step.status, Step.recoveries).where(Step.id.in_(step_ids))
                )
            }
        now = time.time()
        still: list[Watch] = []
        for watch in self.watches:
            status, steps_done = state[watch.run_id]
            progressed = status in TERMINAL or steps_done > watch.steps_done
            taken_over = any(
                steps[sid][0] != "pending" if before is None
                else steps[sid][1] > before or steps[sid][0] != "running"
                for sid, before in watch.steps.items()
            )
            if not watch.resumed and (progressed or taken_over):
                watch.resumed = True
                self.resumed_s.append(now - watch.kill_at)
                self.slowest = sorted([*self.slowest, (now - watch.kill_at, watch.run_id,
                                                       watch.kill_at)], reverse=True)[:3]
            if progressed:
                self.progressed_s.append(now - watch.kill_at)
            else:
                still.append(watch)
        self.watches = still

    def unfinished(self, run_ids: list[str]) -> int:
        with self.db.reader() as s:
            return len(s.scalars(select(Run.id).where(Run.id.in_(run_ids),
                                                      Run.status.not_in(TERMINAL))).all())


def _failpoint_line(worker: WorkerProcess) -> dict[str, Any] | None:
    lines = [ln for ln in worker.log().splitlines() if ln.startswith('{"failpoint"')]
    return json.loads(lines[-1]) if lines else None
