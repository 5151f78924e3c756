"""Retry policy for provider calls, and the signal the task layer turns into a
Celery retry.

Celery's own retry counter is per message, so it cannot say "4 attempts per model,
then the next model of the chain", nor leave rate-limit waits uncounted. The
policy lives here, in the core; the task layer applies it with ``Task.retry``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts_per_model: int = 4
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    jitter: bool = True

    def backoff(self, failures: int) -> float:
        """1, 2, 4, 8 ... seconds (capped) after the 1st, 2nd, 3rd ... failure, with
        "equal jitter": between half and all of it, so retries spread out but never
        come back at once."""
        delay = min(self.backoff_cap_s, self.backoff_base_s * float(2 ** max(0, failures - 1)))
        if not self.jitter:
            return delay
        return float(delay / 2 + random.uniform(0, delay / 2))


class RetryLater(Exception):
    """Hand the step back to the broker and run it again after ``countdown_s``."""

    def __init__(self, countdown_s: float, reason: str):
        super().__init__(f"retry in {countdown_s:.2f}s ({reason})")
        self.countdown_s = countdown_s
        self.reason = reason
