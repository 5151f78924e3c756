"""An enforced requests-per-minute limit over a rolling 60-second window.

Only accepted requests take a slot, as with the real providers: a client that keeps
knocking while limited does not push its own recovery further away.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    # Seconds until the window is empty again ("fully replenished", as both providers
    # define their reset headers); retry-after says when the next single slot frees.
    reset_s: float


@dataclass(frozen=True)
class Admission:
    allowed: bool
    retry_after_s: int  # whole seconds until a slot frees; 0 when allowed
    state: RateState


class RollingWindowLimiter:
    """Not thread-safe: it lives on the server's event loop, like everything it counts."""

    def __init__(self, rpm: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rpm = rpm
        self._clock = clock
        self._accepted: deque[float] = deque()

    @property
    def enabled(self) -> bool:
        return self._rpm > 0

    def set_limit(self, rpm: int) -> None:
        self._rpm = rpm

    def clear(self) -> None:
        self._accepted.clear()

    def admit(self) -> Admission:
        if not self.enabled:
            return Admission(True, 0, RateState(0, 0, 0.0))
        now = self._clock()
        self._expire(now)
        if len(self._accepted) < self._rpm:
            self._accepted.append(now)
            return Admission(True, 0, self._state(now))
        wait = self._accepted[0] + WINDOW_S - now
        return Admission(False, max(1, math.ceil(wait)), self._state(now))

    def state(self) -> RateState:
        now = self._clock()
        self._expire(now)
        return self._state(now)

    def _expire(self, now: float) -> None:
        while self._accepted and self._accepted[0] <= now - WINDOW_S:
            self._accepted.popleft()

    def _state(self, now: float) -> RateState:
        reset = self._accepted[-1] + WINDOW_S - now if self._accepted else 0.0
        remaining = max(0, self._rpm - len(self._accepted))
        return RateState(limit=self._rpm, remaining=remaining, reset_s=max(0.0, reset))
