"""The agent loop, one step at a time.

Each step runs in three parts so that no database transaction is held across a
network call: *claim* (pending -> running, under a lease), *call* (the provider or
the tool), *record* (the outcome, the successors, the run's totals, in one
transaction). A step's outcome is recorded before its broker message is
acknowledged, so a redelivered step finds it and does not call again; successors
have deterministic ids and are claimed atomically, so a duplicate dispatch is a
no-op. Between the call and the record, the call's answer waits in the step
journal (``celeriac.journal``): a worker killed in that window leaves it there, and
the step's rerun records it without a second call or a second run of the tool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from celeriac.budget.config import Budgets
from celeriac.budget.gate import BudgetGate, Reservation
from celeriac.budget.keeper import BudgetKeeper
from celeriac.calling import Caller, CallFailed, Served, Throttled
from celeriac.catalog import AgentVersion, Catalog, ModelSpec
from celeriac.clock import aware, utcnow
from celeriac.context import (
    CHARS_PER_TOKEN,
    SUMMARY_HEADER,
    Measure,
    Window,
    choose_fold,
    measure,
    transcript,
)
from celeriac.conversation import Prompt, load_prompt
from celeriac.errors import CeleriacError, TransientProviderError
from celeriac.failpoints import NO_FAILPOINTS, Failpoints
from celeriac.journal import StepJournal
from celeriac.lease import LeaseKeeper
from celeriac.messages import Message, text_of, tool_uses, user_text
from celeriac.observer import NullObserver, Observer, RunReport, StepReport
from celeriac.pricing import price_of, usd_to_nanos
from celeriac.priority import priority_from_level
from celeriac.providers.base import LLMRequest
from celeriac.retry import RetryLater, RetryPolicy
from celeriac.steps import llm_step_id, new_step, summary_step_id
from celeriac.store import Database, LedgerEntry, Run, Step
from celeriac.store.schema import TERMINAL_STATUSES
from celeriac.toolbox import Toolbox
from celeriac.tools.base import ToolContext, ToolResult
from celeriac.tools.limit import run_with_limit

log = structlog.get_logger("celeriac.loop")
# How long a run waits before trying again when its tenant is at its running cap.
# How long a first step waits before it asks again: a tenant at its running cap, or
# a thread whose earlier turn is still running (short: a reply is what the user awaits).
DEFER_WAIT_S = {"tenant_at_capacity": 2.0, "thread_busy": 0.5}
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
    note: str  # executed | duplicate | busy | skipped | missing | deferred
    dispatch: list[Dispatch] = field(default_factory=list)
    reason: str = ""  # why a step was deferred


@dataclass
class _Claim:
    run_id: str
    turn: int
    name: str
    model: str
    max_tokens: int
    agent_ref: str
    tool_call_args: dict[str, object] | None
    kind: str = "llm"
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
        # Set by each entry point: records the webhook event and enqueues delivery.
        self.on_webhook: Callable[[RunReport], None] | None = None
        # Set by the worker: indexes a completed turn for the recall tool.
        self.on_completed: Callable[[RunReport], None] | None = None
        self.forward_simulator_headers = forward_simulator_headers
        self.journal = journal
        self.failpoints = failpoints

    # -- claim -------------------------------------------------------------------

    def _claim(self, step_id: str) -> tuple[_Claim | None, Outcome]:
        claim, outcome, dead = self._claim_in_transaction(step_id)
        if dead is not None:
            self.announce(dead)
        return claim, outcome

    def _claim_in_transaction(
        self, step_id: str
    ) -> tuple[_Claim | None, Outcome, RunReport | None]:
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            if step is None:
                return None, Outcome("missing"), None
            run = s.get(Run, step.run_id, with_for_update=True)
            assert run is not None
            # Read the clock once the locks are held: a claim that waited behind
            # another transaction must not date itself before that one committed
            # (a run's started_at would precede the finish that made room for it).
            now = utcnow()
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
            if run.status == "queued" and run.thread_seq > 1 and _thread_busy(s, run):
                # Turns of one conversation never interleave: wait for the earlier ones.
                return None, Outcome("deferred", reason="thread_busy"), None
            if run.status == "queued" and self.tenant_max_running > 0:
                # Two runs of one tenant starting at once must not both see room
                # under the cap: serialize starts per tenant (SQLite already does).
                self.db.serialize(s, f"tenant-start:{run.tenant}")
                running = s.scalar(
                    select(func.count())
                    .select_from(Run)
                    .where(Run.tenant == run.tenant, Run.status == "running")
                ) or 0
                if running >= self.tenant_max_running:
                    # The tenant is at its cap: this run waits its turn, queued.
                    return None, Outcome("deferred", reason="tenant_at_capacity"), None
                now = utcnow()  # admitted now, after every finish the count saw
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
                kind=step.kind,
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
            raise RetryLater(DEFER_WAIT_S[outcome.reason], outcome.reason)
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
        window = _window(chain[start:], claim.max_tokens)
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
        claim: _Claim,
        chain: list[ModelSpec],
        start: int,
        build: Callable[[ModelSpec], LLMRequest],
        cache_ttl_s: int,
    ) -> Outcome:
        """Make the step's call down ``chain`` from ``start``, and record it."""
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
                update(Step)
                .where(Step.id == step_id, Step.status == "pending")
                .values(sent_at=due)
            )

    # -- context window ------------------------------------------------------------

    def _count_tokens(self, request: LLMRequest) -> int | None:
        """The provider's own count of a prompt, where its SDK offers one; None
        otherwise, or when counting fails (the estimate is used instead)."""
        try:
            model = self.catalog().model(request.model)
            return self.caller.providers.for_model(model).count_tokens(request)
        except Exception as exc:  # a failed count must not fail the step
            log.warning("count_tokens_failed", model=request.model, error=repr(exc))
            return None

    def _fold(
        self,
        step_id: str,
        claim: _Claim,
        version: AgentVersion,
        chain: list[ModelSpec],
        prompt: Prompt,
        tools: list[dict[str, object]],
        window: Window,
        size: Measure,
    ) -> Outcome:
        """The prompt is over the window: create a summary step for the older turns
        and park this step until it is done; or fail if nothing can make it fit."""
        how = "counted" if size.exact else "estimated"
        sizes = (
            f"the prompt is {size.tokens} tokens ({how}); the context window is "
            f"{window.context_window} with max_tokens {window.max_tokens} reserved, "
            f"so {window.limit} are left for the prompt"
        )
        summary_id = summary_step_id(claim.run_id, claim.turn)
        cheap = min(chain, key=_price_rank)
        with self.db.reader() as s:
            done = s.scalar(select(Step.status).where(Step.id == summary_id)) == "completed"
        point = None
        if not done:  # one fold per turn: a second would mean the fold did not help
            point = choose_fold(
                version.system_prompt,
                tools,
                prompt.full,
                window,
                start=prompt.covers + 1,
                summary_allowance=min(SUMMARY_MAX_TOKENS, cheap.max_output_tokens),
            )
        if point is None:
            raise CeleriacError(
                f"context window exceeded: {sizes}; even the latest exchange with a "
                f"summary of the rest does not fit",
                code="context_window_exceeded",
            )
        now = utcnow()
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            run = s.get(Run, claim.run_id, with_for_update=True)
            if step is None or run is None or step.status != "running" or run.terminal:
                return Outcome("duplicate")
            summary = s.get(Step, summary_id, with_for_update=True)
            if summary is None:
                summary = new_step(
                    run.id, turn=claim.turn, kind="summary", name=cheap.id, index=0, now=now,
                    arguments={"covers": point, "for_step": step_id},
                )
                s.add(summary)
            # Parked: the summary step sends it again when it is done (and, should that
            # message be lost, the reaper re-sends a pending step long past its sending).
            step.status, step.lease_until, step.sent_at = "pending", None, now
            _touch(run, now)
            dispatch = [_dispatch_for(summary, run)] if summary.status == "pending" else []
        log.info("context_fold", run_id=claim.run_id, step=step_id, covers=point,
                 messages=len(prompt.full), tokens=size.tokens, limit=window.limit)
        self.observer.count("context_fold", {"model": chain[0].id})
        return Outcome("executed", dispatch)

    def _run_summary(
        self,
        step_id: str,
        claim: _Claim,
        chain: list[ModelSpec],
        prompt: Prompt,
        meta: dict[str, object],
    ) -> Outcome:
        """Fold ``prompt.full[:covers]`` (after any earlier summary) into a summary,
        made by the cheapest model of the agent's chain, then the others by price."""
        arguments = dict(claim.tool_call_args or {})
        covers = int(str(arguments["covers"]))
        folded = prompt.full[prompt.covers : covers]
        by_price = sorted(chain, key=_price_rank)

        def build(model: ModelSpec) -> LLMRequest:
            price_of(model)
            max_tokens = min(SUMMARY_MAX_TOKENS, model.max_output_tokens)
            # Leave room for the instructions and the answer in the summarizer's window.
            room = int((model.context_window - max_tokens) * CHARS_PER_TOKEN * 0.8)
            earlier = f"{SUMMARY_HEADER}\n{prompt.summary}\n\n" if prompt.summary else ""
            body = earlier + transcript(folded, limit_chars=max(1000, room - len(earlier)))
            return LLMRequest(
                model=model.id,
                system=SUMMARIZER_SYSTEM,
                messages=[user_text(f"{SUMMARIZE_REQUEST}\n\n{body}")],
                tools=[],
                max_tokens=max_tokens,
                headers=self._headers(step_id, claim.turn, model.id, meta),
            )

        return self._call(step_id, claim, by_price, 0, build, cache_ttl_s=0)

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
            if step is None or run is None or step.status != "running":
                # Another delivery took the step over after our lease ran out (our
                # worker hung, it did not die) and recorded its own call. The ledger
                # holds one paid call per step (unique step_id); a second one is
                # only possible in this race, and is logged rather than lost.
                if served.replayed_from is None and not served.cached:
                    log.warning("provider_call_paid_twice", step=step_id, model=model,
                                cost_usd=cost / 1e9)
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
            _touch(run, now)
            dispatch: list[Dispatch] = []
            calls = tool_uses(response.content)
            if step.kind == "summary":
                dispatch = _summary_done(s, step, run, text_of(response.content))
            elif run.terminal:
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
        outcome = self._record_tool(step_id, claim, result, latency,
                                    None if journaled is None else journaled.at)
        if self.journal is not None:
            self.journal.forget(step_id, [])
        self.failpoints.hit("after_record", step_id)
        return outcome

    def _run_tool(self, step_id: str, claim: _Claim) -> tuple[ToolResult, float]:
        version = self.catalog().resolve(claim.agent_ref, routing_key=claim.run_id)
        arguments = dict(claim.tool_call_args or {})
        context = ToolContext(tenant=claim.tenant, run_id=claim.run_id, step_id=step_id)
        log.info("tool_call", run_id=claim.run_id, step=step_id, tool=claim.name)
        self.failpoints.hit("before_tool", step_id)
        started = time.perf_counter()
        with self.leases.held(step_id), _tracer.start_as_current_span(
            "tool.call", attributes={"tool.name": claim.name}
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

    def _record_tool(self, step_id: str, claim: _Claim, result: ToolResult, latency: float,
                     replayed_from: float | None) -> Outcome:
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
        if report.status == "completed" and self.on_completed is not None:
            self.on_completed(report)


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


def _thread_busy(s: Session, run: Run) -> bool:
    """Whether an earlier turn of the run's thread has not ended yet."""
    earlier = s.scalar(
        select(func.count())
        .select_from(Run)
        .where(
            Run.thread_id == run.thread_id,
            Run.thread_seq < run.thread_seq,
            Run.status.not_in(TERMINAL_STATUSES),
        )
    )
    return bool(earlier)


def _summary_done(s: Session, step: Step, run: Run, text: str) -> list[Dispatch]:
    """Keep the summary on its step and send the parked LLM step again."""
    arguments = dict(step.arguments or {})
    step.output = {**(step.output or {}), "summary": text, "covers": int(arguments["covers"])}
    parked = s.get(Step, str(arguments["for_step"]), with_for_update=True)
    if run.terminal or parked is None or parked.status != "pending":
        return []
    # Unsent until the broker has it: if we die before sending, the reaper sends it.
    parked.sent_at = None
    return [_dispatch_for(parked, run)]


def _window(chain: list[ModelSpec], max_tokens: int) -> Window:
    """Any model left in the chain may serve the call, so the prompt must fit the
    smallest window among them."""
    smallest = min(chain, key=lambda m: m.context_window)
    return Window(smallest.context_window, min(max_tokens, smallest.max_output_tokens))


def _price_rank(model: ModelSpec) -> float:
    price = price_of(model)
    return price.input + price.output


# The summary step: its instructions, and the room it may take in the next prompt.
SUMMARY_MAX_TOKENS = 1024
SUMMARIZER_SYSTEM = (
    "You compress conversations between a user and an AI agent. Write a faithful, "
    "compact summary in plain text: every fact the user stated, names, numbers, "
    "decisions, tool results that still matter, and what is still open. No preamble."
)
SUMMARIZE_REQUEST = "Summarize the conversation so far:"
