"""Faults on demand: the server's config sets defaults, ``x-sim-*`` request headers
override them for one request, so a test can break exactly the call it means to.

    x-sim-latency-ms    milliseconds to wait before answering
    x-sim-fault         429 | 500 | 502 | 503 | 504 | 529 | 400 | 401 | 403 | 404 | timeout
    x-sim-timeout-s     how long "timeout" holds the request before hanging up (30)
    x-sim-fault-rate    probability of a random 429, 500, 503 or 529
    x-sim-retry-after   retry-after, in seconds, sent with injected 429s
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from celeriac.simulator.config import SimConfig
from celeriac.simulator.errors import BadRequest

TIMEOUT = "timeout"
FORCED_STATUSES = (429, 500, 502, 503, 504, 529, 400, 401, 403, 404)
RANDOM_STATUSES = (429, 500, 503, 529)


@dataclass(frozen=True)
class RequestFaults:
    """The fault settings that apply to one request."""

    latency_s: float
    forced: int | str | None  # an HTTP status, TIMEOUT, or None
    fault_rate: float
    retry_after_s: float
    timeout_s: float

    @classmethod
    def resolve(cls, headers: Mapping[str, str], config: SimConfig) -> RequestFaults:
        """Headers win over config. A malformed header is a 400, not silently
        ignored: a test that asked for a fault and got none would pass for no reason."""
        latency_ms = _number(headers, "x-sim-latency-ms", config.latency_ms, 600_000)
        return cls(
            latency_s=latency_ms / 1000,
            forced=_forced(headers.get("x-sim-fault")),
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


def _forced(value: str | None) -> int | str | None:
    if value is None or not value.strip():
        return None
    value = value.strip().lower()
    if value == TIMEOUT:
        return TIMEOUT
    if value.isdigit() and int(value) in FORCED_STATUSES:
        return int(value)
    choices = ", ".join([*map(str, FORCED_STATUSES), TIMEOUT])
    raise BadRequest(f"x-sim-fault must be one of {choices}, not {value!r}")


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
