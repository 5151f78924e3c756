"""One LLM call, made safely: which model of the chain, when, and what came back.

For a step, starting at the chain position it reached so far:
1. skip models whose circuit is open (fallback reason ``circuit_open``);
2. reserve the call's worst-case cost against the budgets; a refusal moves on to
   the next (cheaper) model of the chain (reason ``budget``), or ends the run with
   ``budget_exceeded`` when none is left;
3. reserve rate-limit capacity; a wait within ``wait_in_place_s`` is slept here, a
   longer one either falls back (past ``fallback_after_wait_s``, reason
   ``rate_limited``) or re-queues the step with the wait as countdown (``Throttled``);
   the provider's client is resolved before the slot, and a thread that wakes too
   late for its slot takes a fresh one, so calls reach the provider on their slots;
4. serve from the response cache when the agent opted in (before any reservation:
   a hit costs nothing);
5. call the provider; journal its answer (with its cost and budget reservation)
   before anything else, and settle the budget reservation to the actual cost; then
   feed the outcome to the breaker, settle the token reservation to the reported
   usage, and turn provider feedback (a 429, exhausted rate-limit headers) into a
   slower pace for every worker (a long retry-after also pauses the model).
Before all of this, a step that already has a journaled answer (its worker died
after the provider answered) is served from the journal: no second call, no second
payment. Failures come back as ``CallFailed``; the loop decides on retry or fallback.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog
from opentelemetry import trace

from celeriac.accounting.gate import BudgetGate, Reservation
from celeriac.accounting.keeper import Refusal
from celeriac.accounting.pricing import cost_nanos, price_of
from celeriac.catalog import ModelSpec
from celeriac.durability.failpoints import NO_FAILPOINTS, Failpoints
from celeriac.durability.journal import CallOnWire, JournaledCall, StepJournal
from celeriac.errors import (
    BudgetExceeded,
    ProviderError,
    RateLimited,
    RequestExceedsTPM,
    TransientProviderError,
)
from celeriac.gateway.cache import ResponseCache
from celeriac.gateway.limits.breaker import CircuitBreaker
from celeriac.gateway.limits.config import Limits
from celeriac.gateway.limits.ratelimit import Grant, RateLimiter
from celeriac.gateway.providers.base import LLMRequest, LLMResponse, Provider
from celeriac.gateway.providers.registry import ProviderRegistry

_tracer = trace.get_tracer("celeriac.gateway.caller")
log = structlog.get_logger("celeriac.gateway.caller")
SLOT_HEADER = "x-celeriac-slot"
# Late wake-ups in a row (each takes a fresh slot) before the step is re-queued.
LATE_SLOTS = 3
# No thread wakes exactly on time: with jitter_s = 0 every call would count as late.
MIN_LATE_S = 0.02


@dataclass(frozen=True)
class Served:
    response: LLMResponse
    model: ModelSpec
    index: int
    latency_ms: float
    cached: bool
    fallback_reason: str | None
    waited_s: float
    reservation: Reservation | None = None
    cost_nanos: int = 0
    # Served from the step journal: the answer a killed worker had already received.
    replayed_from: float | None = None  # when it was journaled (unix time)


class Throttled(Exception):
    """No capacity soon enough on any usable model: re-queue after ``wait_s``."""

    def __init__(self, wait_s: float, index: int, reason: str | None):
        super().__init__(f"throttled for {wait_s:.2f}s")
        self.wait_s, self.index, self.reason = wait_s, index, reason


class CallFailed(Exception):
    def __init__(self, error: ProviderError, model: ModelSpec, index: int, latency_ms: float,
                 reason: str | None):
        super().__init__(error.message)
        self.error, self.model, self.index = error, model, index
        self.latency_ms, self.reason = latency_ms, reason


@dataclass
class Caller:
    providers: ProviderRegistry
    limiter: RateLimiter
    breaker: CircuitBreaker
    cache: ResponseCache
    limits: Limits
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    journal: StepJournal | None = None
    failpoints: Failpoints = NO_FAILPOINTS

    def call(
        self,
        chain: list[ModelSpec],
        start: int,
        build: Callable[[ModelSpec], LLMRequest],
        *,
        cache_ttl_s: int = 0,
        reason: str | None = None,
        gate: BudgetGate | None = None,
        step_id: str | None = None,
    ) -> Served:
        """``step_id`` turns the journal on: answers are journaled under it, and a
        journaled answer is served instead of a call."""
        if step_id is not None and self.journal is not None:
            found = self.journal.find_call(step_id, [m.id for m in chain])
            if found is not None:
                index, entry = found
                return Served(entry.response, chain[index], index, entry.latency_ms, False,
                              reason, 0.0, entry.reservation, entry.cost_nanos,
                              replayed_from=entry.at)
        shortest_wait: float | None = None
        refusals: list[Refusal] = []
        for index in range(start, len(chain)):
            model = chain[index]
            last = index == len(chain) - 1
            if index > start and reason is None:
                reason = "fallback"
            if not self.breaker.allow(model.id):
                reason = "circuit_open"
                shortest_wait = _min(shortest_wait, self.limits.breaker.open_s)
                continue
            request = build(model)
            if cache_ttl_s > 0:
                hit = self.cache.get(request)
                if hit is not None:
                    return Served(hit, model, index, 0.0, True, reason, 0.0)
            # The client before the slot: the first one in a process imports its SDK
            # (a second or more), which between a grant and its call would send the
            # first calls late and bunched into the same window.
            provider = self.providers.for_model(model)
            reservation: Reservation | None = None
            if gate is not None:
                held = gate.reserve(model, request, estimate_input_tokens(request))
                if isinstance(held, Refusal):
                    refusals.append(held)
                    reason = "budget"
                    continue
                reservation = held
            tokens = estimate_input_tokens(request) + request.max_tokens
            try:
                grant = self._take_slot(model.id, tokens)
            except RequestExceedsTPM as exc:  # permanent: the loop fails the step
                if gate is not None and reservation is not None:
                    gate.release(reservation)
                raise CallFailed(exc, model, index, 0.0, reason) from None
            if not grant.granted:
                if gate is not None and reservation is not None:
                    gate.release(reservation)
                shortest_wait = _min(shortest_wait, grant.wait_s)
                if not last and grant.wait_s > self.limits.fallback_after_wait_s:
                    reason = "rate_limited"
                    continue
                raise Throttled(grant.wait_s, index, reason)
            try:
                served = self._call(provider, model, index, _stamped(request, grant.slot_s),
                                    tokens, reason, grant.wait_s, cache_ttl_s, step_id,
                                    reservation, gate)
            except CallFailed:
                if gate is not None and reservation is not None:
                    gate.release(reservation)  # a failed call costs nothing
                raise
            return replace(served, reservation=reservation)
        if refusals and shortest_wait is None:
            tenant = gate.tenant if gate is not None else ""
            raise BudgetExceeded(refusals[0].message(tenant))
        raise Throttled(shortest_wait or self.limits.wait_in_place_s, start, reason)

    def _take_slot(self, model: str, tokens: int) -> Grant:
        """Reserve the next slot and sleep until it. A wait past ``wait_in_place_s``
        comes back ungranted with nothing reserved: the step is re-queued and asks
        again when it returns. (Holding the slot across the re-queue was tried and
        measured worse, 578 RPM against 590 of 600 on the rate_limit bench: under
        load Celery runs a countdown task seconds late, and a held slot missed is a
        slot lost.)

        The pace leaves room for ``jitter_s`` of grant -> arrival lag. A thread that
        wakes later than half of it after its slot (a stalled process, a busy CPU)
        would reach the provider bunched with the calls granted after it, so it takes
        a fresh slot instead; the missed one stays spent, which errs on the safe side.
        After ``LATE_SLOTS`` late wake-ups in a row the step is re-queued at once."""
        late_after = max(MIN_LATE_S, self.limits.jitter_s / 2)
        waited = 0.0
        for _ in range(LATE_SLOTS):
            grant = self.limiter.acquire(model, tokens, max_wait_s=self.limits.wait_in_place_s)
            if not grant.granted:
                return grant
            due = self.clock() + grant.wait_s
            if grant.wait_s > 0:
                self.sleep(grant.wait_s)
            late = self.clock() - due
            # A call granted at once did not wait, however late its thread ran on:
            # counting that as a wait told the autoscaler every call was rate-limited.
            waited += grant.wait_s + max(0.0, late) if grant.wait_s > 0 else 0.0
            if late <= late_after:
                return replace(grant, wait_s=waited)
            log.info("rate_limit_late", model=model, late_s=round(late, 3))
        return Grant(False, 0.0)

    def _call(self, provider: Provider, model: ModelSpec, index: int, request: LLMRequest,
              estimate: int, reason: str | None, waited: float, cache_ttl_s: int,
              step_id: str | None, reservation: Reservation | None,
              gate: BudgetGate | None) -> Served:
        self.failpoints.hit("before_call", step_id or "")
        # Noted before it goes out: a worker killed with the request on the wire leaves
        # the note, and the step's rerun charges the call (celeriac.durability.lost_calls).
        wire = self.journal if step_id is not None and reservation is not None else None
        if wire is not None and step_id is not None and reservation is not None:
            wire.put_on_wire(step_id, CallOnWire(
                wire_id=uuid.uuid4().hex[:12], model=model.id, provider=model.provider,
                day=reservation.day, tenant=reservation.tenant,
                worst_nanos=reservation.amount_nanos,
                input_tokens=estimate - request.max_tokens, max_tokens=request.max_tokens,
                at=time.time()))
        started = time.perf_counter()
        try:
            with _tracer.start_as_current_span(
                "llm.call", attributes={"llm.model": model.id, "llm.provider": model.provider}
            ):
                response = provider.complete(request)
        except ProviderError as exc:
            if wire is not None and step_id is not None:
                wire.clear_on_wire(step_id, model.id)  # refused: nothing billed
            latency = (time.perf_counter() - started) * 1000
            self.limiter.settle_tokens(model.id, estimate, 0)
            # A 429 is the provider pacing us, not an outage: it slows the model
            # (below) but does not count against its circuit.
            if isinstance(exc, TransientProviderError) and not isinstance(exc, RateLimited):
                self.breaker.record(model.id, ok=False)
            if isinstance(exc, RateLimited):
                self._pushed_back(model.id, "429", exc.retry_after_s or 0.0)
            raise CallFailed(exc, model, index, latency, reason) from None
        latency = (time.perf_counter() - started) * 1000
        cost = cost_nanos(price_of(model), response.usage)
        if step_id is not None and self.journal is not None:
            # First, before anything that could fail or be interrupted: from here
            # on a rerun of this step records this answer instead of paying again.
            entry = JournaledCall(response, latency, cost, reservation, time.time())
            self.journal.put_call(step_id, model.id, entry)
        if gate is not None and reservation is not None:
            # Spent now, whatever happens to this worker; settling is idempotent,
            # so the loop's settle after the record (or a replay's) is a no-op.
            gate.release(reservation, actual_nanos=cost)
        self.failpoints.hit("after_call", step_id or "")
        self.breaker.record(model.id, ok=True)
        self.limiter.settle_tokens(model.id, estimate, response.usage.total_tokens)
        if exhausted(response.rate_headers):
            self._pushed_back(model.id, "headers", 0.0)
        if cache_ttl_s > 0:
            self.cache.put(request, response, cache_ttl_s)
        return Served(response, model, index, latency, False, reason, waited, cost_nanos=cost)

    def _pushed_back(self, model: str, source: str, retry_after_s: float) -> None:
        """Provider feedback slows the model's pace for every worker (AIMD: a cut
        now, linear recovery) rather than stopping all calls: our pace is already
        within a few percent of the limit, and the refused call itself retries after
        its own retry-after. Only a long retry-after (a provider shedding load, not
        pacing us) also pauses the model for everyone."""
        factor = self.limiter.slow_down(model)
        paused = retry_after_s >= self.limits.pause_after_s
        if paused:
            self.limiter.pause(model, retry_after_s)
        log.info("provider_pushback", model=model, source=source, pace_factor=factor,
                 paused_s=retry_after_s if paused else 0.0)


def _stamped(request: LLMRequest, slot_s: float) -> LLMRequest:
    """The request with its granted slot in ``x-celeriac-slot`` (unix seconds), so the
    provider side (the simulator's log) can measure grant -> arrival lag per call."""
    return replace(request, headers={**request.headers, SLOT_HEADER: f"{slot_s:.6f}"})


def _min(current: float | None, value: float) -> float:
    return value if current is None else min(current, value)


def estimate_input_tokens(request: LLMRequest) -> int:
    """A deliberately high estimate of the prompt's tokens: three characters a token
    (English prose runs near four), so reservations rarely fall short of usage."""
    size = len(request.system) + len(json.dumps(request.messages)) + len(json.dumps(request.tools))
    return math.ceil(size / 3) + 16


# The reset times beside these headers are when the window is *fully* replenished (up
# to a minute away), not when the next call fits: exhaustion slows the pace instead.
_REMAINING = (
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)


def exhausted(headers: dict[str, str]) -> bool:
    """Whether rate-limit headers say nothing is left (requests or tokens)."""
    return any(headers.get(name, "").strip() == "0" for name in _REMAINING)
