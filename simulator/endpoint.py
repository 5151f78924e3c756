"""One model call, in either wire format, from arrival to logged answer.

The order of checks is the order a real provider applies them: the key, then the
body, then faults and the RPM window, then the (simulated) model. Forced faults
skip the RPM window, so a test that forces a 500 does not use up a slot. Latency
delays answers and injected faults; 401s, 400s and RPM 429s go out at once, as a
real provider's front door refuses without thinking.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import uuid
from typing import Any

from simulator import tokens
from simulator.errors import BadRequest, SimError
from simulator.faults import TIMEOUT, RequestFaults
from simulator.http11 import Request, Response
from simulator.request_log import LogEntry
from simulator.script import respond
from simulator.state import SimState
from simulator.wire import Wire

STEP_HEADER = "x-celeriac-step"
SLOT_HEADER = "x-celeriac-slot"


class _HangUp(Exception):
    """The "timeout" fault: close the connection without an answer."""


async def model_call(
    state: SimState, wire: Wire, request: Request, *, counting: bool = False
) -> Response | None:
    entry = LogEntry(
        ts=request.arrived,
        endpoint=wire.name,
        path=request.path,
        request_id=f"req_{uuid.uuid4().hex[:24]}",
        step=request.headers.get(STEP_HEADER),
        slot=_slot(request.headers.get(SLOT_HEADER)),
    )
    headers = [(wire.request_id_header, entry.request_id)]
    try:
        payload = await _answer(state, wire, request, entry, counting)
        status = 200
    except _HangUp:
        state.log.append(entry)
        return None
    except SimError as exc:
        status = wire.status_for(exc.status)
        payload = wire.error(exc.status, exc.message, entry.request_id)
        entry.fault = exc.fault
        if exc.retry_after_s is not None:
            headers.append(("retry-after", f"{exc.retry_after_s:g}"))
    if state.limiter.enabled and not counting:
        headers.extend(wire.rate_headers(state.limiter.state()))
    entry.status = status
    state.log.append(entry)
    return Response.json(status, payload, tuple(headers))


async def _answer(
    state: SimState, wire: Wire, request: Request, entry: LogEntry, counting: bool
) -> Any:
    config = state.config  # one snapshot for the whole request
    key = wire.api_key(request.headers)
    if key is None:
        raise SimError(401, wire.missing_key_message())
    if config.require_key is not None and not hmac.compare_digest(
        key.encode(), config.require_key.encode()
    ):
        raise SimError(401, "invalid API key")
    conversation = wire.parse(_json(request.body), counting=counting)
    entry.model = conversation.model
    if counting:
        entry.input_tokens = tokens.input_tokens(conversation)
        return {"input_tokens": entry.input_tokens}

    if config.context_window:
        wanted = tokens.input_tokens(conversation) + (conversation.max_tokens or 0)
        if wanted > config.context_window:
            raise SimError(
                400, f"prompt is too long: {wanted} tokens > {config.context_window} maximum"
            )
    faults = RequestFaults.resolve(request.headers, config, conversation)
    if faults.forced == TIMEOUT:
        entry.fault = "forced"
        await asyncio.sleep(faults.timeout_s)
        raise _HangUp
    if isinstance(faults.forced, int):
        await asyncio.sleep(faults.latency_s)
        raise _injected(faults.forced, faults, "forced", key=key if faults.echo_key else None)
    admission = state.limiter.admit()
    if not admission.allowed:
        message = f"Rate limit of {admission.state.limit} requests per minute exceeded"
        raise SimError(429, message, retry_after_s=admission.retry_after_s, fault="rpm")
    # Roll on arrival, not after the sleep, so the fault sequence follows arrival
    # order and a seed replays the same way.
    rolled = state.dice.roll(faults.fault_rate)
    await asyncio.sleep(faults.latency_s)
    if rolled is not None:
        raise _injected(rolled, faults, "random")
    reply = respond(conversation)
    entry.input_tokens, entry.output_tokens = reply.input_tokens, reply.output_tokens
    return wire.render(reply, conversation, entry.request_id)


def _injected(
    status: int, faults: RequestFaults, origin: str, *, key: str | None = None
) -> SimError:
    retry_after = faults.retry_after_s if status == 429 else None
    message = f"Simulated {status} ({origin} fault injected by the simulator)"
    if key is not None:
        # What some providers and gateways do: the caller's key, whole, in the body.
        message = f"{message}: API key {key} was not accepted for this request"
    return SimError(status, message, retry_after_s=retry_after, fault=origin)


def _slot(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
