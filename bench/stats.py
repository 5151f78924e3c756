"""Percentiles and the timing arithmetic shared by the workloads."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def rounded(value: float, digits: int = 2) -> float:
    return round(value, digits) if math.isfinite(value) else value


def orchestration_ms(ends: Sequence[float], latencies_ms: Sequence[float]) -> list[float]:
    """Per step k >= 1 of a sequential chain: the time from the end of step k-1's call
    to the end of step k's call, minus step k's own call time. ``ends`` are in seconds.
    Everything that is not the provider or the tool counts: recording step k-1,
    enqueueing step k, the broker, claiming step k, building its request."""
    return [
        (ends[k] - ends[k - 1]) * 1000 - latencies_ms[k] for k in range(1, len(ends))
    ]
