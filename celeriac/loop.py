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
from opentelemetry import trace
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celeriac.budget.config import Budgets
from celeriac.budget.gate import BudgetGate, Reservation
from celeriac.budget.keeper import BudgetKeeper
from celeriac.calling import Caller, CallFailed, Served, Throttled
from celeriac.catalog import AgentVersion, Catalog, ModelSpec
from celeriac.clock import aware, utcnow
from celeriac.conversation import conversation
from celeriac.errors import CeleriacError, TransientProviderError
from celeriac.lease import LeaseKeeper
from celeriac.messages import Message, text_of, tool_uses
from celeriac.observer import NullObserver, Observer, RunReport, StepReport
from celeriac.pricing import cost_nanos, price_of, usd_to_nanos
from celeriac.priority import priority_from_level
from celeriac.providers.base import LLMRequest
from celeriac.retry import RetryLater, RetryPolicy
from celeriac.steps import llm_step_id, new_step
from celeriac.store import Database, LedgerEntry, Run, Step
from celeriac.toolbox import Toolbox

log = structlog.get_logger("celeriac.loop")
# How long a run waits before trying again when its tenant is at its running cap.
TENANT_WAIT_S = 2.0
_tracer = trace.get_tracer("celeriac.loop")


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
    chain_index: int = 0
    fallback_reason: str | None = None
    tenant: str = "default"
    budget_nanos: int = 0
    spent_nanos: int = 0
    attempts: int = 0


class AgentLoop:
    def __init__(
        self,
        db: Database,
        catalog: Callable[[], Catalog],
        caller: Caller,
        toolbox: Toolbox,
        *,
        retry: RetryPolicy | None = None,
        keeper: BudgetKeeper | None = None,
        budgets: Budgets | None = None,
        price_version: Callable[[], str] = lambda: "",
        observer: Observer | None = None,
        lease_s: float = 30.0,
        max_recoveries: int = 5,
        tenant_max_running: int = 0,
        forward_simulator_headers: bool = False,
    ):
        self.db = db
        self.catalog = catalog
        self.caller = caller
        self.retry = retry or RetryPolicy()
        self.keeper = keeper
        self.budgets = budgets or Budgets()
        self.price_version = price_version
        self.toolbox = toolbox
        self.observer = observer or NullObserver()
        self.lease = timedelta(seconds=lease_s)
        self.leases = LeaseKeeper(db, self.lease)
        self.max_recoveries = max_recoveries
        self.tenant_max_running = tenant_max_running
        # Set by each entry point: records the webhook event and enqueues delivery.
        self.on_webhook: Callable[[RunReport], None] | None = None
        self.forward_simulator_headers = forward_simulator_headers

    # -- claim -------------------------------------------------------------------

    def _claim(self, step_id: str) -> tuple[_Claim | None, Outcome]:
        claim, outcome, dead = self._claim_in_transaction(step_id)
        if dead is not None:
            self.announce(dead)
        return claim, outcome

    def _claim_in_transaction(
        self, step_id: str
    ) -> tuple[_Claim | None, Outcome, RunReport | None]:
        now = utcnow()
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None:
                return None, Outcome("missing"), None
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            step.deliveries += 1
            if step.status == "completed":
                # Redelivered after the outcome was recorded: only make sure the
                # successors were dispatched (a crash may have come in between).
                # Sending a pending successor twice is harmless: its claim is atomic.
                return None, Outcome("duplicate", _successors(s, step)), None
            if step.status in ("failed", "skipped", "cancelled"):
                return None, Outcome("skipped"), None
            if run.terminal:
                step.status = "cancelled" if run.status == "cancelled" else "skipped"
                step.finished_at = now
                return None, Outcome("skipped"), None
            if step.status == "running" and step.lease_until and aware(step.lease_until) > now:
                return None, Outcome("busy"), None
            if run.deadline_at is not None and aware(run.deadline_at) < now:
                step.status, step.finished_at = "failed", now
                error = deadline_error(run)
                step.error_code, step.error_message = error
                return None, Outcome("deadline"), finish_run(run, now, "failed", error=error)
            if step.status == "running":
                # Its worker died mid-step (the lease ran out): count it, and stop
                # a poison step from looping forever.
                step.recoveries += 1
                if step.recoveries > self.max_recoveries:
                    error = (
                        "dead_letter",
                        f"step {step.id} was interrupted {step.recoveries} times "
                        f"(its worker died or hung each time); giving up",
                    )
                    step.status, step.finished_at = "failed", now
                    step.error_code, step.error_message = error
                    return None, Outcome("dead_letter"), finish_run(run, now, "failed", error=error)
            if run.status == "queued" and self.tenant_max_running > 0:
                running = s.scalar(
                    select(func.count())
                    .select_from(Run)
                    .where(Run.tenant == run.tenant, Run.status == "running")
                ) or 0
                if running >= self.tenant_max_running:
                    # The tenant is at its cap: this run waits its turn, queued.
                    return None, Outcome("deferred"), None
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
                chain_index=step.chain_index,
                fallback_reason=step.fallback_reason,
                tenant=run.tenant,
                budget_nanos=usd_to_nanos(run.budget_usd),
                spent_nanos=run.cost_nanos,
                attempts=len(step.attempt_log or []),
            )
            return claim, Outcome("executed"), None

    # -- LLM steps -----------------------------------------------------------------

    def run_llm_step(self, step_id: str) -> Outcome:
        """Run one LLM step. Raises RetryLater (re-queue) or a CeleriacError (fail)."""
        claim, outcome = self._claim(step_id)
        if outcome.note == "deferred":
            raise RetryLater(TENANT_WAIT_S, "tenant_at_capacity")
        if claim is None:
            return outcome
        catalog = self.catalog()
        version = catalog.resolve(claim.agent_ref, routing_key=claim.run_id)
        chain = model_chain(catalog, claim.model, version)
        with self.db.reader() as s:
            run = s.get(Run, claim.run_id)
            assert run is not None
            steps = list(s.scalars(select(Step).where(Step.run_id == claim.run_id)))
            messages = conversation(run, steps)
            meta = dict(run.meta or {})
        tools = self.toolbox.specs(version)

        def build(model: ModelSpec) -> LLMRequest:
            price_of(model)  # fail closed before any call to an unpriced model
            headers = self._headers(step_id, claim.turn, model.id, meta)
            return _request(model, version, messages, tools, claim.max_tokens, headers)

        gate = None
        if self.keeper is not None:
            gate = BudgetGate(
                keeper=self.keeper,
                day=self.budgets.day(utcnow()).isoformat(),
                tenant=claim.tenant,
                reservation_prefix=f"{step_id}:{claim.attempts}",
                task_cap_nanos=claim.budget_nanos,
                task_spent_nanos=claim.spent_nanos,
                on_reserved=lambda r: self._note_reservation(step_id, r),
            )
        try:
            with self.leases.held(step_id):
                served = self.caller.call(
                    chain,
                    min(claim.chain_index, len(chain) - 1),
                    build,
                    cache_ttl_s=version.cache_ttl_s,
                    reason=claim.fallback_reason,
                    gate=gate,
                )
        except Throttled as throttled:
            self._hand_back(step_id, throttled.index, throttled.reason)
            self.observer.count("rate_limit_requeue", {"model": chain[throttled.index].id})
            raise RetryLater(throttled.wait_s, "rate_limited") from None
        except CallFailed as failed:
            raise self._failed_attempt(step_id, failed, len(chain)) from None
        if served.waited_s > 0:
            self.observer.count("rate_limit_wait", {"model": served.model.id})
        if served.index > claim.chain_index and served.fallback_reason:
            self.observer.count(
                "fallback",
                {"from_model": chain[claim.chain_index].id, "reason": served.fallback_reason},
            )
        cost = 0 if served.cached else cost_nanos(price_of(served.model), served.response.usage)
        usage = served.response.usage
        log.info(
            "llm_call",
            run_id=claim.run_id,
            step=step_id,
            model=served.model.id,
            provider=served.model.provider,
            latency_ms=round(served.latency_ms, 1),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost / 1e9,
            cached=served.cached,
            fallback_reason=served.fallback_reason,
            stop_reason=served.response.stop_reason,
        )
        return self._record_llm(step_id, served, cost)

    def _failed_attempt(self, step_id: str, failed: CallFailed, chain_len: int) -> Exception:
        """Record a failed call; return what to raise: RetryLater, or the error itself."""
        error = failed.error
        transient = isinstance(error, TransientProviderError)
        limit = self.retry.attempts_per_model
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            failures = 0
            advanced = False
            if step is not None and step.status == "running":
                entry = {
                    "model": failed.model.id,
                    "index": failed.index,
                    "ok": False,
                    "status": error.status,
                    "code": error.code,
                    "latency_ms": round(failed.latency_ms, 1),
                    "at": utcnow().isoformat(),
                }
                step.attempt_log = [*step.attempt_log, entry]
                step.attempts += 1
                step.chain_index, step.fallback_reason = failed.index, failed.reason
                step.error_code, step.error_message = error.code, error.message
                step.reservation = None  # released by the caller
                failures = sum(
                    1
                    for e in step.attempt_log
                    if e.get("index") == failed.index and not e.get("ok")
                )
                advanced = transient and failures >= limit and failed.index + 1 < chain_len
                if advanced:
                    step.chain_index, step.fallback_reason = failed.index + 1, "retries_exhausted"
                if transient and (failures < limit or advanced):
                    step.status, step.lease_until = "pending", None
        self.observer.step_finished(
            StepReport(
                run_id=step_id.split("-")[0],
                step_id=step_id,
                kind="llm",
                name=failed.model.id,
                provider=failed.model.provider,
                status="retrying" if transient else "failed",
                latency_ms=failed.latency_ms,
                error_code=error.code,
            )
        )
        if not transient:
            return error
        if advanced:
            self.observer.count(
                "fallback", {"from_model": failed.model.id, "reason": "retries_exhausted"}
            )
            return RetryLater(0, "fallback")
        if failures >= limit:
            return error
        countdown = max(self.retry.backoff(failures), error.retry_after_s or 0.0)
        return RetryLater(countdown, error.code)

    def _note_reservation(self, step_id: str, reservation: Reservation) -> None:
        with self.db.session() as s:
            step = s.get(Step, step_id)
            if step is not None:
                step.reservation = {
                    "id": reservation.id,
                    "day": reservation.day,
                    "tenant": reservation.tenant,
                    "amount": reservation.amount_nanos,
                }

    def _hand_back(self, step_id: str, index: int, reason: str | None) -> None:
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is not None and step.status == "running":
                step.status, step.lease_until = "pending", None
                step.chain_index, step.fallback_reason = index, reason
                step.reservation = None  # released by the caller

    def _headers(
        self, step_id: str, turn: int, model: str, meta: dict[str, object]
    ) -> dict[str, str]:
        """``x-celeriac-step`` names the step (the simulator logs it, so tests can prove
        a step reached the provider once). With the simulated provider, a task's
        ``metadata.simulator`` becomes ``x-sim-*`` fault-injection headers: plain keys
        for every call, ``models.<id>`` for one model, ``turns.<n>`` for one turn
        (scopes nest: ``turns.1.models.<id>``)."""
        headers = {"x-celeriac-step": step_id}
        simulator = meta.get("simulator")
        if not (self.forward_simulator_headers and isinstance(simulator, dict)):
            return headers
        merged = _scoped(simulator, model=model, turn=str(turn))
        for key, value in merged.items():
            headers[f"x-sim-{str(key).replace('_', '-')}"] = str(value)
        return headers

    def _record_llm(self, step_id: str, served: Served, cost: int) -> Outcome:
        outcome = self._record_llm_outcome(step_id, served, cost)
        reservation = served.reservation
        if reservation is not None and self.keeper is not None:
            # After the ledger row committed: if we crash before this, the reaper
            # settles the reservation from the ledger.
            self.keeper.settle(reservation.id, day=reservation.day, tenant=reservation.tenant,
                               actual_nanos=cost)
            if cost > reservation.amount_nanos:
                log.warning("budget_reservation_short", step=step_id,
                            reserved_nanos=reservation.amount_nanos, cost_nanos=cost)
        return outcome

    def _record_llm_outcome(self, step_id: str, served: Served, cost: int) -> Outcome:
        response, model, latency_ms = served.response, served.model.id, served.latency_ms
        now = utcnow()
        finished: RunReport | None = None
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            run = s.get(Run, step.run_id, with_for_update=True) if step is not None else None
            if served.reservation is not None and run is not None:
                # Every paid call is in the ledger, even a duplicate's.
                s.add(
                    LedgerEntry(
                        step_id=step_id,
                        reservation_id=served.reservation.id,
                        run_id=run.id,
                        tenant=run.tenant,
                        day=served.reservation.day,
                        model=model,
                        provider=served.model.provider,
                        input_tokens=response.usage.input_tokens,
                        output_tokens=response.usage.output_tokens,
                        cache_write_tokens=response.usage.cache_write_tokens,
                        cache_read_tokens=response.usage.cache_read_tokens,
                        cost_nanos=cost,
                        cached=served.cached,
                        price_version=self.price_version(),
                        created_at=now,
                    )
                )
            if step is None or run is None or step.status != "running":
                # Another delivery took the step over after our lease ran out.
                return Outcome("duplicate")
            step.attempts += 1
            step.attempt_log = [
                *step.attempt_log,
                {
                    "model": model,
                    "index": served.index,
                    "ok": True,
                    "status": 200,
                    "cached": served.cached,
                    "latency_ms": round(latency_ms, 1),
                },
            ]
            step.status = "completed"
            step.model = model
            step.chain_index, step.fallback_reason = served.index, served.fallback_reason
            step.cached = served.cached
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
                finished = finish_run(
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
                finished = finish_run(run, now, "completed")
        self.observer.step_finished(
            StepReport(
                run_id=run.id,
                step_id=step_id,
                kind="llm",
                name=model,
                provider=served.model.provider,
                status="cached" if served.cached else "completed",
                latency_ms=latency_ms,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cost_nanos=cost,
            )
        )
        if finished is not None:
            self.announce(finished)
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
        with self.leases.held(step_id), _tracer.start_as_current_span(
            "tool.call", attributes={"tool.name": claim.name}
        ):
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
                finished = finish_run(run, now, "failed", error=(error.code, error.message))
        if finished is not None:
            self.announce(finished)

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
            finished = finish_run(
                run, now, "cancelled", error=("cancelled", "cancelled by request")
            )
            ids = [st.id for st in open_steps]
        self.announce(finished)
        return ids

    def announce(self, report: RunReport) -> None:
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
        if report.webhook_url and self.on_webhook is not None:
            self.on_webhook(report)


def _touch(run: Run, now: object) -> None:
    run.updated_at = now  # type: ignore[assignment]
    run.version += 1


def finish_run(
    run: Run, now: object, status: str, error: tuple[str, str] | None = None
) -> RunReport:
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
        webhook_url=run.webhook_url,
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


def model_chain(catalog: Catalog, primary: str, version: AgentVersion) -> list[ModelSpec]:
    """The run's model first, then the agent's fallbacks, each once."""
    ids = list(dict.fromkeys([primary, *version.fallbacks]))
    return [catalog.model(model_id) for model_id in ids]


def _request(
    model: ModelSpec,
    version: AgentVersion,
    messages: list[Message],
    tools: list[dict[str, object]],
    max_tokens: int,
    headers: dict[str, str],
) -> LLMRequest:
    return LLMRequest(
        model=model.id,
        system=version.system_prompt,
        messages=messages,
        tools=tools,
        max_tokens=min(max_tokens, model.max_output_tokens),
        headers=headers,
    )


def _scoped(options: dict[str, object], *, model: str, turn: str) -> dict[str, object]:
    merged = {k: v for k, v in options.items() if k not in ("models", "turns")}
    for scope, key in (("models", model), ("turns", turn)):
        scoped = options.get(scope)
        if isinstance(scoped, dict) and isinstance(scoped.get(key), dict):
            merged.update(_scoped(scoped[key], model=model, turn=turn))
    return merged


def deadline_error(run: Run) -> tuple[str, str]:
    limit = (aware(run.deadline_at) - aware(run.created_at)).total_seconds()  # type: ignore[arg-type]
    return (
        "deadline_exceeded",
        f"the task ran past its wall-clock limit of {limit:.0f} s (max_duration_s)",
    )
