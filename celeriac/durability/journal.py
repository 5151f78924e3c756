"""The step journal: what a step's call produced, kept in Redis from the moment it
arrives until the step's outcome is recorded in the store.

A step records its outcome in one transaction after its call. A worker killed in
between (after the provider answered, after the tool did its effect) would make the
step's rerun pay the provider again, or run the tool again. The journal closes that
window: the answer is written first, and a rerun of the step finds it and records
it without calling. It is keyed by step id (the step's deterministic id, stable
across redeliveries) and, for LLM calls, by the model that answered, so a rerun
that starts at another position of the fallback chain still finds it.

What is left is the call itself: a worker killed while the request is on the wire
never sees the answer, so its rerun calls again (at-least-once, as everywhere). No
provider offers an idempotency key for completions, so that call is paid twice; but
it is not forgotten: the journal notes each call as it goes on the wire, and the
rerun that finds such a note charges it (``celeriac.durability.lost_calls``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from redis import Redis

from celeriac import redis_keys as keys
from celeriac.accounting.gate import Reservation
from celeriac.gateway.providers.base import LLMResponse, Usage
from celeriac.tools.base import ToolResult

log = structlog.get_logger("celeriac.durability.journal")


@dataclass(frozen=True)
class JournaledCall:
    response: LLMResponse
    latency_ms: float
    cost_nanos: int
    reservation: Reservation | None
    at: float  # unix time the answer was journaled


@dataclass(frozen=True)
class CallOnWire:
    """A provider call sent and not yet answered, with what it may cost."""

    wire_id: str  # unique per call: the charge's idempotency key
    model: str
    provider: str
    day: str  # the budget day and tenant of its reservation
    tenant: str
    worst_nanos: int  # its budget reservation: the worst case it may have cost
    input_tokens: int  # the estimate
    max_tokens: int
    at: float  # unix time it went out


@dataclass(frozen=True)
class JournaledTool:
    result: ToolResult
    latency_ms: float
    at: float


class StepJournal:
    def __init__(self, redis: Redis, ttl_s: int = keys.JOURNAL_TTL_S):
        self.redis = redis
        self.ttl_s = ttl_s

    # -- LLM calls -------------------------------------------------------------------

    def put_call(self, step_id: str, model: str, call: JournaledCall) -> bool:
        """Journal an answer. False when Redis could not take it: the step goes on
        (only a kill before its record would now cost a second call)."""
        r = call.response
        doc: dict[str, Any] = {
            "response": {"model": r.model, "content": r.content, "stop_reason": r.stop_reason,
                         "usage": r.usage.to_dict(), "request_id": r.request_id},
            "latency_ms": call.latency_ms,
            "cost_nanos": call.cost_nanos,
            "reservation": None if call.reservation is None else {
                "id": call.reservation.id, "day": call.reservation.day,
                "tenant": call.reservation.tenant, "amount": call.reservation.amount_nanos},
            "at": call.at,
        }
        try:
            # One round trip: the answer in, and the call's on-the-wire note out
            # (answered, nothing is lost), atomically.
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(keys.journal_call(step_id, model), json.dumps(doc), ex=self.ttl_s)
            pipe.delete(keys.journal_wire(step_id, model))
            pipe.execute()
        except Exception as exc:  # Redis trouble must not lose an answer already paid for
            log.warning("journal_write_failed", step=step_id, error=repr(exc))
            return False
        return True

    def put_on_wire(self, step_id: str, call: CallOnWire) -> None:
        """Note a call about to go out. Without the note (Redis trouble) only a kill
        during this very call would go uncharged."""
        self._put(keys.journal_wire(step_id, call.model), asdict(call), step_id)

    def find_on_wire(self, step_id: str, models: list[str]) -> list[CallOnWire]:
        if not models:
            return []
        raws = self.redis.mget([keys.journal_wire(step_id, m) for m in models])
        return [CallOnWire(**json.loads(raw)) for raw in raws if raw is not None]

    def clear_on_wire(self, step_id: str, model: str) -> None:
        try:
            self.redis.delete(keys.journal_wire(step_id, model))
        except Exception as exc:  # a stale note is charged once, by the next rerun
            log.warning("journal_clear_failed", step=step_id, error=repr(exc))

    def find_call(self, step_id: str, models: list[str]) -> tuple[int, JournaledCall] | None:
        """The journaled answer for this step, from any model of its chain: (the
        model's position in ``models``, the answer)."""
        if not models:
            return None
        raws = self.redis.mget([keys.journal_call(step_id, m) for m in models])
        for index, raw in enumerate(raws):
            if raw is None:
                continue
            doc = json.loads(raw)
            r, held = doc["response"], doc["reservation"]
            response = LLMResponse(model=r["model"], content=r["content"],
                                   stop_reason=r["stop_reason"], usage=Usage(**r["usage"]),
                                   request_id=r.get("request_id"))
            reservation = None if held is None else Reservation(
                held["id"], held["day"], held["tenant"], int(held["amount"]))
            return index, JournaledCall(response, float(doc["latency_ms"]),
                                        int(doc["cost_nanos"]), reservation, float(doc["at"]))
        return None

    # -- tool calls ------------------------------------------------------------------

    def put_tool(self, step_id: str, result: ToolResult, latency_ms: float) -> bool:
        doc = {"content": result.content, "is_error": result.is_error, "code": result.code,
               "latency_ms": latency_ms, "at": time.time()}
        return self._put(keys.journal_tool(step_id), doc, step_id)

    def find_tool(self, step_id: str) -> JournaledTool | None:
        raw = self.redis.get(keys.journal_tool(step_id))
        if raw is None:
            return None
        doc = json.loads(raw)
        result = ToolResult(doc["content"], bool(doc["is_error"]), doc.get("code"))
        return JournaledTool(result, float(doc["latency_ms"]), float(doc["at"]))

    # -- both ----------------------------------------------------------------------

    def forget(self, step_id: str, models: list[str]) -> None:
        """Once the outcome is in the store the journal has done its job; a failure
        here only leaves the entries to their TTL."""
        names = [keys.journal_tool(step_id), *(keys.journal_call(step_id, m) for m in models),
                 *(keys.journal_wire(step_id, m) for m in models)]
        try:
            self.redis.delete(*names)
        except Exception as exc:  # the TTL cleans up; the step is already recorded
            log.warning("journal_forget_failed", step=step_id, error=repr(exc))

    def _put(self, key: str, doc: dict[str, Any], step_id: str) -> bool:
        try:
            self.redis.set(key, json.dumps(doc), ex=self.ttl_s)
        except Exception as exc:  # Redis trouble must not lose an answer already paid for
            log.warning("journal_write_failed", step=step_id, error=repr(exc))
            return False
        return True
