"""Faults on demand: the server's config sets defaults, ``x-sim-*`` request headers
override them for one request, so a test can break exactly the call it means to.

    x-sim-latency-ms    milliseconds to wait before answering
    x-sim-fault         429 | 500 | 502 | 503 | 504 | 529 | 400 | 401 | 403 | 404 | timeout,
                        or a status with "-echo-key" (401-echo-key): the error message
                        repeats the caller's API key, as some providers and gateways do
    x-sim-timeout-s     how long "timeout" holds the request before hanging up (30)
    x-sim-fault-rate    probability of a random 429, 500, 503 or 529
    x-sim-retry-after   retry-after, in seconds, sent with injected 429s

A run in real-provider mode (keys set, base URLs pointed at the simulator) sends no
``x-sim-*`` headers, so the latest user message may ask for a forced fault instead:
``[sim-fault:401-echo-key]`` in it acts as that ``x-sim-fault`` (the header wins).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from simulator.config import SimConfig
from simulator.conversation import Conversation
from simulator.errors import BadRequest

TIMEOUT = "timeout"
ECHO_KEY = "-echo-key"
_FAULT_DIRECTIVE = re.compile(r"\[sim-fault:([A-Za-z0-9_\-]+)\]")
FORCED_STATUSES = (429, 500, 502, 503, 504, 529, 400, 401, 403, 404)
RANDOM_STATUSES = (429, 500, 503, 529)


@dataclass(frozen=True)
class RequestFaults:
    """The fault settings that apply to one request."""

    latency_s: float
    forced: int | str | None  # an HTTP status, TIMEOUT, or None
    echo_key: bool  # the forced error's message repeats the caller's API key
    fault_rate: float
    retry_after_s: float
    timeout_s: float

    @classmethod
    def resolve(
        cls, headers: Mapping[str, str], config: SimConfig, conversation: Conversation | None = None
    ) -> RequestFaults:
        """Headers win over the conversation's directive, which wins over config. A
        malformed header is a 400, not silently ignored: a test that asked for a fault
        and got none would pass for no reason."""
        latency_ms = _number(headers, "x-sim-latency-ms", config.latency_ms, 600_000)
        fault = headers.get("x-sim-fault")
        if fault is None and conversation is not None:
            fault = fault_directive(conversation)
        forced, echo_key = _forced(fault)
        return cls(
            latency_s=latency_ms / 1000,
            forced=forced,
            echo_key=echo_key,
            fault_rate=_number(headers, "x-sim-fault-rate", config.fault_rate, 1.0),
            retry_after_s=_number(headers, "x-sim-retry-after", config.retry_after_s, 3600),
            timeout_s=_number(headers, "x-sim-timeout-s", config.timeout_s, 3600),
        )


class FaultDice:
    """Seeded, so a run with the same seed and the same request order sees the same
    faults. Only the server's event loop rolls them."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self._rng.seed(seed)

    def roll(self, rate: float) -> int | None:
        """A status to fail with, or None to answer normally."""
        if rate <= 0 or self._rng.random() >= rate:
            return None
        return self._rng.choice(RANDOM_STATUSES)


def fault_directive(conversation: Conversation) -> str | None:
    """The ``[sim-fault:...]`` of the latest user message that has text, if any."""
    for turn in reversed(conversation.turns):
        if turn.role == "user" and turn.text.strip():
            found = _FAULT_DIRECTIVE.search(turn.text)
            return found.group(1) if found else None
    return None


def _forced(value: str | None) -> tuple[int | str | None, bool]:
    if value is None or not value.strip():
        return None, False
    value = value.strip().lower()
    if value == TIMEOUT:
        return TIMEOUT, False
    status, echo_key = value, False
    if value.endswith(ECHO_KEY):
        status, echo_key = value.removesuffix(ECHO_KEY), True
    if status.isdigit() and int(status) in FORCED_STATUSES:
        return int(status), echo_key
    choices = ", ".join([*map(str, FORCED_STATUSES), TIMEOUT])
    raise BadRequest(
        f"x-sim-fault must be one of {choices}, or a status with {ECHO_KEY}, not {value!r}"
    )


def _number(headers: Mapping[str, str], name: str, default: float, upper: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= upper:
        raise BadRequest(f"{name} must be a number between 0 and {upper:g}, not {raw!r}")
    return value
