"""The agent loop, one step at a time.

Each step runs in three parts so that no database transaction is held across a
network call: *claim* (pending -> running, under a lease), *call* (the provider or
the tool), *record* (the outcome, the successors, the run's totals, in one
transaction). A step's outcome is recorded before its broker message is
acknowledged, so a redelivered step finds it and does not call again; successors
have deterministic ids and are claimed atomically, so a duplicate dispatch is a
no-op. Between the call and the record, the call's answer waits in the step
journal (``celeriac.durability.journal``): a worker killed in that window leaves it there, and
the step's rerun records it without a second call or a second run of the tool.

The claim and the run-level rules it applies live in ``celeriac.execution.claims``; folding a
conversation that outgrows the context window, in ``celeriac.conversation.folding``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import structlog
from opentelemetry import trace
from sqlalchemy import update

from celeriac.accounting.budgets import Budgets
from celeriac.accounting.gate import BudgetGate, Reservation
from celeriac.accounting.keeper import BudgetKeeper
from celeriac.accounting.pricing import price_of
from celeriac.catalog import AgentVersion, Catalog, ModelSpec
from celeriac.clock import utcnow
from celeriac.conversation.folding import ContextFolding, summary_done, window_for
from celeriac.conversation.history import load_prompt
from celeriac.conversation.messages import Message, text_of, tool_uses
from celeriac.conversation.window import measure
from celeriac.durability.failpoints import NO_FAILPOINTS, Failpoints
from celeriac.durability.journal import StepJournal
from celeriac.durability.lease import LeaseKeeper
from celeriac.durability.lost_calls import charge_lost_calls
from celeriac.errors import CeleriacError, TransientProviderError
from celeriac.execution.claims import (
    DEFER_WAIT_S,
    Claim,
    Dispatch,
    Outcome,
    claim_step,
    dispatch_for,
    finish_run,
    next_turn,
    touch,
)
from celeriac.execution.step_ids import new_step
from celeriac.gateway.caller import Caller, CallFailed, Served, Throttled
from celeriac.gateway.providers.base import LLMRequest
from celeriac.gateway.retry import RetryLater, RetryPolicy
from celeriac.observability.observer import NullObserver, Observer, RunReport, StepReport
from celeriac.store import Database, LedgerEntry, Run, Step
from celeriac.tools.base import ToolContext, ToolResult
from celeriac.tools.limit import run_with_limit
from celeriac.tools.toolbox import Toolbox

log = structlog.get_logger("celeriac.execution.loop")
_tracer = trace.get_tracer("celeriac.execution.loop")


class AgentLoop(ContextFolding):
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
        thread_recheck_s: float = DEFER_WAIT_S["thread_busy"],
        forward_simulator_headers: bool = False,
        journal: StepJournal | None = None,
        failpoints: Failpoints = NO_FAILPOINTS,
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
        self.defer_wait_s = {**DEFER_WAIT_S, "thread_busy": thread_recheck_s}
        # Set by each entry point: records the webhook event and enqueues delivery.
        self.on_webhook: Callable[[RunReport], None] | None = None
        # Set by the worker: indexes a completed turn for the recall tool.
        self.on_completed: Callable[[RunReport], None] | None = None
        # Set by the worker: sends the first step of a thread's next turn, free to
        # start now that the turn before it has ended.
        self.send_next_turn: Callable[[Dispatch], None] | None = None
        self.forward_simulator_headers = forward_simulator_headers
        self.journal = journal
        self.failpoints = failpoints

    # -- claim -------------------------------------------------------------------

    def _claim(self, step_id: str) -> tuple[Claim | None, Outcome]:
        claim, outcome, dead = claim_step(
            self.db,
            step_id,
            lease=self.lease,
            max_recoveries=self.max_recoveries,
            tenant_max_running=self.tenant_max_running,
        )
        if dead is not None:
            self.announce(dead)
        return claim, outcome

    # -- LLM steps -----------------------------------------------------------------

    def run_llm_step(self, step_id: str) -> Outcome:
        """Run one LLM step. Raises RetryLater (re-queue) or a CeleriacError (fail)."""
        claim, outcome = self._claim(step_id)
        if outcome.note == "deferred":
            raise RetryLater(self.defer_wait_s[outcome.reason], outcome.reason)
        if claim is None:
            return outcome
        catalog = self.catalog()
        version = catalog.resolve(claim.agent_ref, routing_key=claim.run_id)
        chain = model_chain(catalog, claim.model, version)
        with self.db.reader() as s:
            run = s.get(Run, claim.run_id)
            assert run is not None
            prompt = load_prompt(s, run)
            meta = dict(run.meta or {})
        if claim.kind == "summary":
            return self._run_summary(step_id, claim, chain, prompt, meta)
        tools = self.toolbox.specs(version)
        messages = prompt.messages
        start = min(claim.chain_index, len(chain) - 1)
        window = window_for(chain[start:], claim.max_tokens)
        size = measure(
            version.system_prompt,
            tools,
            messages,
            window,
            exact=lambda: self._count_tokens(
                _request(chain[start], version, messages, tools, claim.max_tokens, {})
            ),
        )
        if size.tokens > window.limit:
            return self._fold(step_id, claim, version, chain, prompt, tools, window, size)

        def build(model: ModelSpec) -> LLMRequest:
            price_of(model)  # fail closed before any call to an unpriced model
            headers = self._headers(step_id, claim.turn, model.id, meta)
            return _request(model, version, messages, tools, claim.max_tokens, headers)

        return self._call(step_id, claim, chain, start, build, version.cache_ttl_s)

    def _call(
        self,
        step_id: str,
        claim: Claim,
        chain: list[ModelSpec],
        start: int,
        build: Callable[[ModelSpec], LLMRequest],
        cache_ttl_s: int,
    ) -> Outcome:
        """Make the step's call down ``chain`` from ``start``, and record it."""
        if self.journal is not None:
            # An earlier attempt's worker died with its request on the wire: that call
            # was billed, so it is charged before this one goes out.
            lost = charge_lost_calls(self.db, self.journal, self.keeper, step_id,
                                     claim.run_id, [m.id for m in chain], self.price_version())
        else:
            lost = 0
        gate = None
        if self.keeper is not None:
            gate = BudgetGate(
                keeper=self.keeper,
                day=self.budgets.day(utcnow()).isoformat(),
                tenant=claim.tenant,
                reservation_prefix=f"{step_id}:{claim.attempts}",
                task_cap_nanos=claim.budget_nanos,
                task_spent_nanos=claim.spent_nanos + lost,
                on_reserved=lambda r: self._note_reservation(step_id, r),
            )
        try:
            with self.leases.held(step_id):
                served = self.caller.call(
                    chain,
                    start,
                    build,
                    cache_ttl_s=cache_ttl_s,
                    reason=claim.fallback_reason,
                    gate=gate,
                    step_id=step_id,
                )
        except Throttled as throttled:
            self._hand_back(step_id, throttled.index, throttled.reason)
            self.observer.count("rate_limit_requeue", {"model": chain[throttled.index].id})
            raise RetryLater(throttled.wait_s, "rate_limited") from None
        except CallFailed as failed:
            raise self._failed_attempt(step_id, failed, len(chain)) from None
        if served.waited_s > 0:
            self.observer.count("rate_limit_wait", {"model": served.model.id})
        if served.index > start and served.fallback_reason:
            self.observer.count(
                "fallback",
                {"from_model": chain[start].id, "reason": served.fallback_reason},
            )
        cost = 0 if served.cached else served.cost_nanos
        usage = served.response.usage
        if served.replayed_from is not None:
            self.observer.count("journal_replay", {"kind": "llm"})
        log.info(
            "llm_call",
            run_id=claim.run_id,
            step=step_id,
            kind=claim.kind,
            model=served.model.id,
            provider=served.model.provider,
            latency_ms=round(served.latency_ms, 1),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost / 1e9,
            cached=served.cached,
            replayed=served.replayed_from is not None,
            fallback_reason=served.fallback_reason,
            stop_reason=served.response.stop_reason,
        )
        outcome = self._record_llm(step_id, served, cost)
        self.failpoints.hit("after_record", step_id)
        return outcome

    def requeued(self, step_id: str, countdown_s: float) -> None:
        """The step's message is being sent again to run in ``countdown_s`` (a retry, a
        throttle, a deferral). Its countdown lives in a worker's memory, not in the
        broker, so if that worker dies the store must know when the step was due: the
        reaper re-sends a pending step that is well past it."""
        due = utcnow() + timedelta(seconds=countdown_s)
        with self.db.session() as s:
            s.execute(
                update(Step).where(Step.id == step_id, Step.status == "pending").values(sent_at=due)
            )

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
        if self.journal is not None and not served.cached:
            self.journal.forget(step_id, [served.model.id])
        reservation = served.reservation
        if reservation is not None and self.keeper is not None:
            # After the ledger row committed: if we crash before this, the reaper
            # settles the reservation from the ledger.
            self.keeper.settle(
                reservation.id, day=reservation.day, tenant=reservation.tenant, actual_nanos=cost
            )
            if cost > reservation.amount_nanos:
                log.warning(
                    "budget_reservation_short",
                    step=step_id,
                    reserved_nanos=reservation.amount_nanos,
                    cost_nanos=cost,
                )
        return outcome

    def _record_llm_outcome(self, step_id: str, served: Served, cost: int) -> Outcome:
        response, model, latency_ms = served.response, served.model.id, served.latency_ms
        now = utcnow()
        finished: RunReport | None = None
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            run = s.get(Run, step.run_id, with_for_update=True) if step is not None else None
            if step is None or run is None or step.status != "running":
                # Another delivery took the step over after our lease ran out (our
                # worker hung, it did not die) and recorded its own call. The ledger
                # holds one paid call per step (unique step_id); a second one is
                # only possible in this race, and is logged rather than lost.
                if served.replayed_from is None and not served.cached:
                    log.warning(
                        "provider_call_paid_twice", step=step_id, model=model, cost_usd=cost / 1e9
                    )
                return Outcome("duplicate")
            if served.reservation is not None:
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
            step.attempts += 1
            entry: dict[str, object] = {
                "model": model,
                "index": served.index,
                "ok": True,
                "status": 200,
                "cached": served.cached,
                "latency_ms": round(latency_ms, 1),
            }
            if served.replayed_from is not None:
                # Recorded from the journal: when the answer had arrived.
                entry["replayed_from"] = served.replayed_from
            step.attempt_log = [*step.attempt_log, entry]
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
            touch(run, now)
            dispatch: list[Dispatch] = []
            calls = tool_uses(response.content)
            if step.kind == "summary":
                dispatch = summary_done(s, step, run, text_of(response.content))
            elif run.terminal:
                pass  # cancelled while the call was in flight: stop here
            elif calls and step.turn + 1 >= run.max_steps:
                finished = finish_run(
                    run,
                    now,
                    "failed",
                    error=(
                        "max_steps_exceeded",
                        f"the agent wanted more tool calls after {run.max_steps} LLM steps "
                        f"(max_steps={run.max_steps})",
                    ),
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
                    dispatch.append(dispatch_for(tool, run))
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
        journaled = self.journal.find_tool(step_id) if self.journal is not None else None
        if journaled is not None:
            # Its worker died after the tool ran: record that result, do not run again.
            result, latency = journaled.result, journaled.latency_ms
            self.observer.count("journal_replay", {"kind": "tool"})
        else:
            result, latency = self._run_tool(step_id, claim)
        log.info(
            "tool_result",
            run_id=claim.run_id,
            step=step_id,
            tool=claim.name,
            is_error=result.is_error,
            error_code=result.code if result.is_error else None,
            replayed=journaled is not None,
            latency_ms=round(latency, 1),
        )
        outcome = self._record_tool(
            step_id, claim, result, latency, None if journaled is None else journaled.at
        )
        if self.journal is not None:
            self.journal.forget(step_id, [])
        self.failpoints.hit("after_record", step_id)
        return outcome

    def _run_tool(self, step_id: str, claim: Claim) -> tuple[ToolResult, float]:
        version = self.catalog().resolve(claim.agent_ref, routing_key=claim.run_id)
        arguments = dict(claim.tool_call_args or {})
        context = ToolContext(tenant=claim.tenant, run_id=claim.run_id, step_id=step_id)
        log.info("tool_call", run_id=claim.run_id, step=step_id, tool=claim.name)
        self.failpoints.hit("before_tool", step_id)
        started = time.perf_counter()
        with (
            self.leases.held(step_id),
            _tracer.start_as_current_span("tool.call", attributes={"tool.name": claim.name}),
        ):
            result = run_with_limit(
                lambda: self.toolbox.execute(version, claim.name, arguments, context),
                version.tool_limit_s(claim.name),
                tool=claim.name,
                step=step_id,
            )
        latency = (time.perf_counter() - started) * 1000
        if self.journal is not None:
            self.journal.put_tool(step_id, result, latency)
        self.failpoints.hit("after_tool", step_id)
        return result, latency

    def _record_tool(
        self,
        step_id: str,
        claim: Claim,
        result: ToolResult,
        latency: float,
        replayed_from: float | None,
    ) -> Outcome:
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
            if replayed_from is not None:
                step.attempt_log = [*step.attempt_log, {"replayed_from": replayed_from}]
            if result.is_error:
                step.error_code = result.code or "tool_error"
                step.error_message = result.content[:500]
            run.steps_done += 1
            run.pending_tools -= 1
            touch(run, now)
            dispatch: list[Dispatch] = []
            if run.pending_tools <= 0 and not run.terminal:
                # The last tool of the turn joins: it creates the next LLM step.
                nxt = new_step(
                    run.id, turn=step.turn + 1, kind="llm", name=run.model, index=0, now=now
                )
                s.add(nxt)
                dispatch.append(dispatch_for(nxt, run))
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
        if report.status == "completed" and self.on_completed is not None:
            self.on_completed(report)
        if report.thread_id and self.send_next_turn is not None:
            try:
                following = next_turn(self.db, report.thread_id, report.thread_seq)
                if following is not None:
                    self.send_next_turn(following)
            except Exception as exc:  # the next turn re-checks on its own anyway
                log.warning("next_turn_not_sent", run_id=report.run_id, error=repr(exc))


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
