"""Driving the two systems under test from the bench process.

:class:`CeleriacDriver` submits agent tasks exactly as the web app does (the core's
``submit`` persists the run and its first step, then the first step is sent by name)
and reads the runs and steps back from the store. :class:`BareDriver` sends the
baseline chains of :mod:`bench.bare` and collects their timings from Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select

from app import create_app
from bench.bare import DONE_KEY, LLM_TASK, bare_config
from bench.harness import BENCH_AGENT, Stack
from bench.processes import BenchError, wait_for
from celeriac.clock import aware
from celeriac.conversation.messages import user_text
from celeriac.services import Services
from celeriac.store import Database, Run, Step
from celeriac.store.schema import TERMINAL_STATUSES

_CHUNK = 500  # ids per IN (...) query


def _ts(moment: datetime | None) -> float | None:
    return aware(moment).timestamp() if moment is not None else None


@dataclass(frozen=True)
class StepTiming:
    kind: str
    status: str
    created: float
    started: float | None
    finished: float | None
    latency_ms: float | None


@dataclass(frozen=True)
class RunTiming:
    id: str
    status: str
    error_code: str | None
    priority: str
    created: float
    started: float | None
    finished: float | None
    steps: tuple[StepTiming, ...]


def simulator_metadata(latency_ms: float | None) -> dict[str, Any]:
    return {} if latency_ms is None else {"simulator": {"latency_ms": latency_ms}}


class CeleriacDriver:
    """Submits through the web app's own route (in-process, with Flask's test client:
    the same validation, persistence and enqueueing as a POST to gunicorn, without
    the HTTP hop), and reads the store directly."""

    def __init__(self, stack: Stack):
        self.settings = stack.settings()
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.services = Services(self.settings)  # for the catalog and the tool specs
        self.db = Database(self.settings.database_url)

    def close(self) -> None:
        web = self.app.extensions["celeriac"]
        web.queue.celery.close()
        web.services.db.dispose()
        self.db.dispose()

    def submit(
        self,
        text: str,
        *,
        priority: str | None = None,
        metadata: dict[str, Any] | None = None,
        agent: str = BENCH_AGENT,
    ) -> str:
        body: dict[str, Any] = {"input": text, "agent": agent, "metadata": metadata or {}}
        if priority is not None:
            body["priority"] = priority
        response = self.client.post("/agent/run", json=body)
        if response.status_code != 202:
            raise BenchError(f"POST /agent/run: {response.status_code} {response.get_data()!r}")
        task_id: str = response.get_json()["task_id"]
        return task_id

    def first_request(self, text: str) -> dict[str, Any]:
        """What the first LLM step of a bench task sends, for the baseline to send too."""
        catalog = self.services.catalog()
        version = catalog.resolve(BENCH_AGENT, routing_key="bench")
        model = catalog.model(version.model)
        request: dict[str, Any] = {
            "model": model.id,
            "max_tokens": min(version.max_tokens, model.max_output_tokens),
        }
        if version.system_prompt:
            request["system"] = version.system_prompt
        tools = self.services.toolbox.specs(version)
        if tools:
            request["tools"] = tools
        return {"request": request, "messages": [user_text(text)],
                "llm_steps": version.max_steps}

    def count(self, statuses: Sequence[str] = TERMINAL_STATUSES) -> int:
        with self.db.reader() as s:
            return int(s.scalar(select(func.count()).select_from(Run)
                                .where(Run.status.in_(statuses))) or 0)

    def wait_started(self, n: int, timeout: float, watch: Sequence[Any] = ()) -> None:
        def started() -> bool:
            with self.db.reader() as s:
                query = select(func.count()).select_from(Run).where(Run.started_at.is_not(None))
                return int(s.scalar(query) or 0) >= n

        wait_for(started, timeout=timeout, interval=0.25, what=f"{n} runs to start",
                 watch=watch)

    def count_steps(self, status: str, kind: str | None = None) -> int:
        query = select(func.count()).select_from(Step).where(Step.status == status)
        if kind is not None:
            query = query.where(Step.kind == kind)
        with self.db.reader() as s:
            return int(s.scalar(query) or 0)

    def wait_terminal(self, n: int, timeout: float, watch: Sequence[Any] = (),
                      interval: float = 0.25) -> None:
        wait_for(lambda: self.count() >= n, timeout=timeout, interval=interval,
                 what=f"{n} runs to finish", watch=watch)

    def runs(self, ids: Sequence[str]) -> list[RunTiming]:
        out: list[RunTiming] = []
        with self.db.reader() as s:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                steps: dict[str, list[StepTiming]] = {}
                for step in s.scalars(select(Step).where(Step.run_id.in_(chunk))
                                      .order_by(Step.run_id, Step.seq)):
                    steps.setdefault(step.run_id, []).append(
                        StepTiming(step.kind, step.status, _ts(step.created_at) or 0.0,
                                   _ts(step.started_at), _ts(step.finished_at), step.latency_ms)
                    )
                for run in s.scalars(select(Run).where(Run.id.in_(chunk))):
                    out.append(
                        RunTiming(run.id, run.status, run.error_code, run.priority,
                                  _ts(run.created_at) or 0.0, _ts(run.started_at),
                                  _ts(run.finished_at), tuple(steps.get(run.id, ())))
                    )
        return out


class BareDriver:
    def __init__(self, stack: Stack):
        self.celery = Celery("bench-bare-client")
        self.celery.conf.update(bare_config(stack.redis_url))
        self.redis = stack.redis.client(stack.redis_db)

    def close(self) -> None:
        self.celery.close()
        self.redis.close()

    def send(self, first: dict[str, Any], *, latency_ms: float | None = None,
             queue: str = "default") -> str:
        chain_id = uuid.uuid4().hex
        headers = {} if latency_ms is None else {"x-sim-latency-ms": f"{latency_ms:g}"}
        chain = {
            "id": chain_id,
            "request": first["request"],
            "messages": first["messages"],
            "llm_left": first["llm_steps"],
            "queue": queue,
            "headers": headers,
            "submitted": time.time(),
            "timings": [],
        }
        self.celery.send_task(LLM_TASK, args=[chain], queue=queue, routing_key=queue)
        return chain_id

    def done(self) -> int:
        return int(self.redis.llen(DONE_KEY))

    def wait_done(self, n: int, timeout: float, watch: Sequence[Any] = (),
                  interval: float = 0.1) -> None:
        wait_for(lambda: self.done() >= n, timeout=timeout, interval=interval,
                 what=f"{n} baseline chains to finish", watch=watch)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(DONE_KEY, 0, -1)]
