"""One LLM call, made safely: which model of the chain, when, and what came back.

For a step, starting at the chain position it reached so far:
1. skip models whose circuit is open (fallback reason ``circuit_open``);
2. reserve the call's worst-case cost against the budgets; a refusal moves on to
   the next (cheaper) model of the chain (reason ``budget``), or ends the run with
   ``budget_exceeded`` when none is left;
3. reserve rate-limit capacity; a wait within ``wait_in_place_s`` is slept here, a
   longer one either falls back (past ``fallback_after_wait_s``, reason
   ``rate_limited``) or re-queues the step with the wait as countdown (``Throttled``);
4. serve from the response cache when the agent opted in (before any reservation:
   a hit costs nothing);
5. call the provider, then feed the outcome to the breaker, settle the token
   reservation to the reported usage, and turn provider feedback (429 retry-after,
   exhausted rate-limit headers) into a pause for every worker.
Failures come back as ``CallFailed``; the loop decides on retry or fallback.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from opentelemetry import trace

from celeriac.budget.gate import BudgetGate, Reservation
from celeriac.budget.keeper import Refusal
from celeriac.cache import ResponseCache
from celeriac.catalog import ModelSpec
from celeriac.errors import BudgetExceeded, ProviderError, RateLimited, TransientProviderError
from celeriac.limits.breaker import CircuitBreaker
from celeriac.limits.config import Limits
from celeriac.limits.ratelimit import RateLimiter
from celeriac.providers.base import LLMRequest, LLMResponse
from celeriac.providers.registry import ProviderRegistry

_tracer = trace.get_tracer("celeriac.calling")


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

    def call(
        self,
        chain: list[ModelSpec],
        start: int,
        build: Callable[[ModelSpec], LLMRequest],
        *,
        cache_ttl_s: int = 0,
        reason: str | None = None,
        gate: BudgetGate | None = None,
    ) -> Served:
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
            reservation: Reservation | None = None
            if gate is not None:
                held = gate.reserve(model, request, estimate_input_tokens(request))
                if isinstance(held, Refusal):
                    refusals.append(held)
                    reason = "budget"
                    continue
                reservation = held
            tokens = estimate_input_tokens(request) + request.max_tokens
            # Reserve only what we will wait for in place; a reservation held across a
            # re-queue would be paid twice when the step comes back.
            grant = self.limiter.acquire(model.id, tokens, max_wait_s=self.limits.wait_in_place_s)
            if not grant.granted:
                if gate is not None and reservation is not None:
                    gate.release(reservation)
                shortest_wait = _min(shortest_wait, grant.wait_s)
                if not last and grant.wait_s > self.limits.fallback_after_wait_s:
                    reason = "rate_limited"
                    continue
                raise Throttled(grant.wait_s, index, reason)
            if grant.wait_s > 0:
                self.sleep(grant.wait_s)
            try:
                served = self._call(model, index, request, tokens, reason, grant.wait_s,
                                    cache_ttl_s)
            except CallFailed:
                if gate is not None and reservation is not None:
                    gate.release(reservation)  # a failed call costs nothing
                raise
            return replace(served, reservation=reservation)
        if refusals and shortest_wait is None:
            tenant = gate.tenant if gate is not None else ""
            raise BudgetExceeded(refusals[0].message(tenant))
        raise Throttled(shortest_wait or self.limits.wait_in_place_s, start, reason)

    def _call(self, model: ModelSpec, index: int, request: LLMRequest, estimate: int,
              reason: str | None, waited: float, cache_ttl_s: int) -> Served:
        provider = self.providers.for_model(model)
        started = time.perf_counter()
        try:
            with _tracer.start_as_current_span(
                "llm.call", attributes={"llm.model": model.id, "llm.provider": model.provider}
            ):
                response = provider.complete(request)
        except ProviderError as exc:
            latency = (time.perf_counter() - started) * 1000
            self.limiter.settle_tokens(model.id, estimate, 0)
            # A 429 is the provider pacing us, not an outage: it pauses the model
            # (below) but does not count against its circuit.
            if isinstance(exc, TransientProviderError) and not isinstance(exc, RateLimited):
                self.breaker.record(model.id, ok=False)
            if isinstance(exc, RateLimited) and exc.retry_after_s:
                self.limiter.pause(model.id, exc.retry_after_s)
            raise CallFailed(exc, model, index, latency, reason) from None
        latency = (time.perf_counter() - started) * 1000
        self.breaker.record(model.id, ok=True)
        self.limiter.settle_tokens(model.id, estimate, response.usage.total_tokens)
        pause = exhausted_for(response.rate_headers)
        if pause > 0:
            self.limiter.pause(model.id, pause)
        if cache_ttl_s > 0:
            self.cache.put(request, response, cache_ttl_s)
        return Served(response, model, index, latency, False, reason, waited)


def _min(current: float | None, value: float) -> float:
    return value if current is None else min(current, value)


def estimate_input_tokens(request: LLMRequest) -> int:
    """A deliberately high estimate of the prompt's tokens: three characters a token
    (English prose runs near four), so reservations rarely fall short of usage."""
    size = len(request.system) + len(json.dumps(request.messages)) + len(json.dumps(request.tools))
    return math.ceil(size / 3) + 16


def exhausted_for(headers: dict[str, str]) -> float:
    """Seconds to pause when rate-limit headers say nothing is left, else 0."""
    pairs = [
        ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
        ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
        ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ]
    pause = 0.0
    for remaining, reset in pairs:
        value = headers.get(remaining)
        if value is None or value.strip() != "0":
            continue
        pause = max(pause, _reset_seconds(headers.get(reset, "")))
    return pause


def _reset_seconds(raw: str) -> float:
    """Anthropic sends an RFC 3339 time; OpenAI a duration like "1.5s" or "6m0s"."""
    raw = raw.strip()
    if not raw:
        return 1.0
    if raw[0].isdigit() and ("T" in raw or raw.count("-") >= 2):
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            return max(0.0, (moment - datetime.now(UTC)).total_seconds())
        except ValueError:
            return 1.0
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch.isdigit() or ch == ".":
            number += ch
        elif raw[i:i + 2] == "ms":
            total += float(number or 0) / 1000
            number, i = "", i + 1
        elif ch in units:
            total += float(number or 0) * units[ch]
            number = ""
        i += 1
    if number:
        total += float(number)
    return total
