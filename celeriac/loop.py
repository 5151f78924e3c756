"""The agent loop, one step at a time.

Each step runs in three parts so that no database transaction is held across a
network call: *claim* (pending -> running, under a lease), *call* (the provider or
the tool), *record* (the outcome, the successors, the run's totals, in one
transaction). A step's outcome is recorded before its broker message is
acknowledged, so a redelivered step finds it and does not call again; successors
have deterministic ids and are claimed atomically, so a duplicate dispatch is a
no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.catalog import Catalog
from celeriac.clock import aware, utcnow
from celeriac.conversation import conversation
from celeriac.errors import CeleriacError, ProviderError, TransientProviderError
from celeriac.messages import text_of, tool_uses
from celeriac.observer import NullObserver, Observer, RunReport, StepReport
from celeriac.pricing import cost_nanos, price_of
from celeriac.priority import priority_from_level
from celeriac.providers.base import LLMRequest, LLMResponse
from celeriac.providers.registry import ProviderRegistry
from celeriac.steps import llm_step_id, new_step
from celeriac.store import Database, Run, Step
from celeriac.toolbox import Toolbox

log = structlog.get_logger("celeriac.loop")


@dataclass(frozen=True)
class Dispatch:
    """A step to enqueue: the task layer turns it into a Celery message."""

    step_id: str
    kind: str
    queue: str
    level: int


@dataclass
class Outcome:
    note: str  # executed | duplicate | busy | skipped | missing
    dispatch: list[Dispatch] = field(default_factory=list)


@dataclass
class _Claim:
    run_id: str
    turn: int
    name: str
    model: str
    max_tokens: int
    agent_ref: str
    tool_call_args: dict[str, object] | None


class AgentLoop:
    def __init__(
        self,
        db: Database,
        catalog: Callable[[], Catalog],
        providers: ProviderRegistry,
        toolbox: Toolbox,
        *,
        observer: Observer | None = None,
        lease_s: float = 300.0,
        forward_simulator_headers: bool = False,
    ):
        self.db = db
        self.catalog = catalog
        self.providers = providers
        self.toolbox = toolbox
        self.observer = observer or NullObserver()
        self.lease = timedelta(seconds=lease_s)
        self.forward_simulator_headers = forward_simulator_headers

    # -- claim -------------------------------------------------------------------

    def _claim(self, step_id: str) -> tuple[_Claim | None, Outcome]:
        now = utcnow()
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None:
                return None, Outcome("missing")
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            step.deliveries += 1
            if step.status == "completed":
                # Redelivered after the outcome was recorded: only make sure the
                # successors were dispatched (a crash may have come in between).
                # Sending a pending successor twice is harmless: its claim is atomic.
                return None, Outcome("duplicate", _successors(s, step))
            if step.status in ("failed", "skipped", "cancelled"):
                return None, Outcome("skipped")
            if run.terminal:
                step.status = "cancelled" if run.status == "cancelled" else "skipped"
                step.finished_at = now
                return None, Outcome("skipped")
            if step.status == "running" and step.lease_until and aware(step.lease_until) > now:
                return None, Outcome("busy")
            step.status = "running"
            step.started_at = step.started_at or now
            step.lease_until = now + self.lease
            if run.status == "queued":
                run.status = "running"
                run.started_at = now
                log.info("agent_started", run_id=run.id, agent=run.agent, model=run.model)
            _touch(run, now)
            claim = _Claim(
                run_id=run.id,
                turn=step.turn,
                name=step.name,
                model=run.model,
                max_tokens=run.max_tokens,
                agent_ref=f"{run.agent}@{run.agent_version}",
                tool_call_args=step.arguments,
            )
            return claim, Outcome("executed")

    # -- LLM steps -----------------------------------------------------------------

    def run_llm_step(self, step_id: str) -> Outcome:
        claim, outcome = self._claim(step_id)
        if claim is None:
            return outcome
        catalog = self.catalog()
        version = catalog.resolve(claim.agent_ref, routing_key=claim.run_id)
        model = catalog.model(claim.model)
        price = price_of(model)
        with self.db.reader() as s:
            run = s.get(Run, claim.run_id)
            assert run is not None
            steps = list(s.scalars(select(Step).where(Step.run_id == claim.run_id)))
            messages = conversation(run, steps)
            meta = dict(run.meta or {})
        request = LLMRequest(
            model=model.id,
            system=version.system_prompt,
            messages=messages,
            tools=self.toolbox.specs(version),
            max_tokens=claim.max_tokens,
            headers=self._headers(step_id, meta),
        )
        provider = self.providers.for_model(model)
        started = time.perf_counter()
        try:
            response = provider.complete(request)
        except ProviderError as exc:
            latency = (time.perf_counter() - started) * 1000
            self._record_attempt(step_id, model.id, latency, exc)
            raise
        latency = (time.perf_counter() - started) * 1000
        cost = cost_nanos(price, response.usage)
        log.info(
            "llm_call",
            run_id=claim.run_id,
            step=step_id,
            model=model.id,
            provider=model.provider,
            latency_ms=round(latency, 1),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            cost_usd=cost / 1e9,
            stop_reason=response.stop_reason,
        )
        return self._record_llm(step_id, model.id, model.provider, response, latency, cost)

    def _headers(self, step_id: str, meta: dict[str, object]) -> dict[str, str]:
        headers = {"x-celeriac-step": step_id}
        simulator = meta.get("simulator")
        if self.forward_simulator_headers and isinstance(simulator, dict):
            for key, value in simulator.items():
                headers[f"x-sim-{str(key).replace('_', '-')}"] = str(value)
        return headers

    def _record_attempt(
        self, step_id: str, model: str, latency_ms: float, exc: ProviderError
    ) -> None:
        """Note a failed attempt and hand the step back, so a retry can claim it."""
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None or step.status != "running":
                return
            step.attempts += 1
            step.attempt_log = [
                *step.attempt_log,
                {
                    "model": model,
                    "status": exc.status,
                    "code": exc.code,
                    "latency_ms": round(latency_ms, 1),
                    "at": utcnow().isoformat(),
                },
            ]
            step.error_code, step.error_message = exc.code, exc.message
            if isinstance(exc, TransientProviderError):
                step.status, step.lease_until = "pending", None
        self.observer.step_finished(
            StepReport(
                run_id=step_id.split("-")[0],
                step_id=step_id,
                kind="llm",
                name=model,
                provider=None,
                status="retrying" if isinstance(exc, TransientProviderError) else "failed",
                latency_ms=latency_ms,
                error_code=exc.code,
            )
        )

    def _record_llm(
        self,
        step_id: str,
        model: str,
        provider: str,
        response: LLMResponse,
        latency_ms: float,
        cost: int,
    ) -> Outcome:
        now = utcnow()
        finished: RunReport | None = None
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None or step.status != "running":
                # Another delivery took the step over after our lease ran out.
                return Outcome("duplicate")
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            step.attempts += 1
            step.attempt_log = [
                *step.attempt_log,
                {"model": model, "status": 200, "latency_ms": round(latency_ms, 1)},
            ]
            step.status = "completed"
            step.model = model
            step.output = {"content": response.content, "stop_reason": response.stop_reason}
            step.latency_ms = latency_ms
            step.input_tokens = response.usage.input_tokens
            step.output_tokens = response.usage.output_tokens
            step.cost_nanos = cost
            step.error_code = step.error_message = None
            step.finished_at, step.lease_until = now, None
            run.steps_done += 1
            run.input_tokens += response.usage.input_tokens
            run.output_tokens += response.usage.output_tokens
            run.cost_nanos += cost
            _touch(run, now)
            dispatch: list[Dispatch] = []
            calls = tool_uses(response.content)
            if run.terminal:
                pass  # cancelled while the call was in flight: stop here
            elif calls and step.turn + 1 >= run.max_steps:
                finished = _finish(
                    run, now, "failed", error=("max_steps_exceeded",
                    f"the agent wanted more tool calls after {run.max_steps} LLM steps "
                    f"(max_steps={run.max_steps})"),
                )
            elif calls:
                run.pending_tools = len(calls)
                for index, call in enumerate(calls):
                    tool = new_step(
                        run.id,
                        turn=step.turn,
                        kind="tool",
                        name=str(call["name"]),
                        index=index,
                        now=now,
                        tool_call_id=str(call["id"]),
                        arguments=dict(call.get("input") or {}),
                    )
                    s.add(tool)
                    dispatch.append(_dispatch_for(tool, run))
            else:
                run.result = text_of(response.content)
                finished = _finish(run, now, "completed")
        self.observer.step_finished(
            StepReport(
                run_id=run.id,
                step_id=step_id,
                kind="llm",
                name=model,
                provider=provider,
                status="completed",
                latency_ms=latency_ms,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cost_nanos=cost,
            )
        )
        if finished is not None:
            self._announce(finished)
        return Outcome("executed", dispatch)

    # -- tool steps ----------------------------------------------------------------

    def run_tool_step(self, step_id: str) -> Outcome:
        claim, outcome = self._claim(step_id)
        if claim is None:
            return outcome
        version = self.catalog().resolve(claim.agent_ref, routing_key=claim.run_id)
        arguments = dict(claim.tool_call_args or {})
        log.info("tool_call", run_id=claim.run_id, step=step_id, tool=claim.name)
        started = time.perf_counter()
        result = self.toolbox.execute(version, claim.name, arguments)
        latency = (time.perf_counter() - started) * 1000
        log.info(
            "tool_result",
            run_id=claim.run_id,
            step=step_id,
            tool=claim.name,
            is_error=result.is_error,
            latency_ms=round(latency, 1),
        )
        now = utcnow()
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None or step.status != "running":
                return Outcome("duplicate")
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            step.status = "completed"
            step.attempts += 1
            step.output = {"content": result.content, "is_error": result.is_error}
            step.latency_ms = latency
            step.finished_at, step.lease_until = now, None
            if result.is_error:
                step.error_code, step.error_message = "tool_error", result.content[:500]
            run.steps_done += 1
            run.pending_tools -= 1
            _touch(run, now)
            dispatch: list[Dispatch] = []
            if run.pending_tools <= 0 and not run.terminal:
                # The last tool of the turn joins: it creates the next LLM step.
                nxt = new_step(
                    run.id, turn=step.turn + 1, kind="llm", name=run.model, index=0, now=now
                )
                s.add(nxt)
                dispatch.append(_dispatch_for(nxt, run))
        self.observer.step_finished(
            StepReport(
                run_id=claim.run_id,
                step_id=step_id,
                kind="tool",
                name=claim.name,
                provider=None,
                status="failed" if result.is_error else "completed",
                latency_ms=latency,
            )
        )
        return Outcome("executed", dispatch)

    # -- endings -------------------------------------------------------------------

    def fail_step(self, step_id: str, error: CeleriacError) -> None:
        """A permanent error, or retries exhausted: the step and its run fail."""
        now = utcnow()
        finished = None
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None:
                return
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            if step.status not in ("completed", "cancelled"):
                step.status = "failed"
                step.error_code, step.error_message = error.code, error.message
                step.finished_at, step.lease_until = now, None
            if not run.terminal:
                finished = _finish(run, now, "failed", error=(error.code, error.message))
        if finished is not None:
            self._announce(finished)

    def cancel(self, run_id: str) -> list[str]:
        """Cancel a run; returns the ids of its unfinished steps, to revoke."""
        now = utcnow()
        finished = None
        with self.db.session() as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None or run.terminal:
                return []
            open_steps = [st for st in run.steps if st.status in ("pending", "running")]
            for st in open_steps:
                if st.status == "pending":
                    st.status, st.finished_at = "cancelled", now
            finished = _finish(run, now, "cancelled", error=("cancelled", "cancelled by request"))
            ids = [st.id for st in open_steps]
        self._announce(finished)
        return ids

    def _announce(self, report: RunReport) -> None:
        log.info(
            "agent_completed",
            run_id=report.run_id,
            agent=report.agent,
            status=report.status,
            total_steps=report.total_steps,
            total_tokens=report.input_tokens + report.output_tokens,
            cost_usd=report.cost_nanos / 1e9,
            latency_s=round(report.latency_s, 3),
            error_code=report.error_code,
        )
        self.observer.run_finished(report)


def _touch(run: Run, now: object) -> None:
    run.updated_at = now  # type: ignore[assignment]
    run.version += 1


def _finish(run: Run, now: object, status: str, error: tuple[str, str] | None = None) -> RunReport:
    run.status = status
    run.finished_at = now  # type: ignore[assignment]
    run.pending_tools = 0
    if error is not None:
        run.error_code, run.error_message = error
    _touch(run, now)
    latency = (aware(run.finished_at) - aware(run.created_at)).total_seconds()  # type: ignore[arg-type]
    return RunReport(
        run_id=run.id,
        agent=run.agent,
        model=run.model,
        status=status,
        total_steps=run.steps_done,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost_nanos=run.cost_nanos,
        latency_s=latency,
        error_code=run.error_code,
    )


def _dispatch_for(step: Step, run: Run) -> Dispatch:
    priority = priority_from_level(run.priority_level)
    return Dispatch(step.id, step.kind, priority.queue, priority.level)


def _successors(s: Session, step: Step) -> list[Dispatch]:
    """Pending successors of a completed step (re-dispatched after a crash)."""
    run = step.run
    if run.terminal:
        return []
    if step.kind == "llm":
        candidates = [st for st in run.steps if st.turn == step.turn and st.kind == "tool"]
    else:
        nxt = s.get(Step, llm_step_id(run.id, step.turn + 1))
        candidates = [nxt] if nxt is not None else []
    return [_dispatch_for(st, run) for st in candidates if st.status == "pending"]
