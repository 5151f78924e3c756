"""The autoscaling policy: when to add or remove a worker process. Pure: no I/O and
no clock of its own; ``app.autoscaler`` observes, calls ``decide`` and acts.

Rules, first match wins:

1. Bounds. Fewer workers than ``min_workers``: add; more than ``max_workers``:
   remove. At once, with neither hysteresis nor cooldown.
2. Pressure. Total queue depth above ``add_above``, or CPU above ``cpu_above``
   while work is waiting: add one worker, unless
   - a provider's rate limit is the bottleneck: hold (``rate_limited``), because
     more workers would only wait for the same capacity;
   - already at ``max_workers``: hold (``bounds``).
3. Idle. Queue depth below ``remove_below`` and CPU not above ``cpu_above``: remove
   one worker, or hold at ``min_workers`` (``idle``).
4. Otherwise hold (``steady``).

CPU alone with an empty queue adds nothing: more idle workers cannot help a host
busy with something else.

An add or a remove from rules 2 and 3 needs its condition on ``add_after`` (or
``remove_after``) consecutive samples, so a brief spike or lull does nothing (until
then: hold, with the pending condition as its kind), and ``cooldown_s`` since the
last action, so a change takes effect before the next one is judged (hold,
``cooldown``). While pressure persists, one worker is added per cooldown.

``Decision.kind`` is bounded (``ReasonKind``) so it can be a metric label;
``Decision.reason`` is the sentence for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["add", "remove", "hold"]
ReasonKind = Literal["queue_depth", "cpu", "idle", "rate_limited", "bounds", "cooldown", "steady"]
REASON_KINDS: tuple[ReasonKind, ...] = (
    "queue_depth", "cpu", "idle", "rate_limited", "bounds", "cooldown", "steady"
)
_Signal = Literal["pressure", "idle", "none"]


@dataclass(frozen=True)
class PolicyConfig:
    min_workers: int = 1
    max_workers: int = 4
    add_above: int = 100  # total queue depth
    remove_below: int = 10
    cpu_above: float = 70.0  # percent of the whole host; 100 turns the CPU rule off
    add_after: int = 3  # consecutive samples
    remove_after: int = 6
    cooldown_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_workers < 0:
            raise ValueError("min_workers must be 0 or more")
        if self.max_workers < max(1, self.min_workers):
            raise ValueError("max_workers must be at least 1 and at least min_workers")
        if self.remove_below > self.add_above:
            raise ValueError("remove_below must not be above add_above")
        if self.add_after < 1 or self.remove_after < 1:
            raise ValueError("add_after and remove_after must be at least 1")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        if not 0 <= self.cpu_above <= 100:
            raise ValueError("cpu_above must be between 0 and 100")


@dataclass(frozen=True)
class Observation:
    at: float  # seconds on a monotonic clock
    workers: int  # worker processes consuming (not those draining)
    queue_depth: int  # messages waiting in every queue
    cpu_percent: float  # the host's, 0-100
    rate_limited: bool = False  # a provider's rate limit is the bottleneck


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    kind: ReasonKind


@dataclass(frozen=True)
class History:
    """The latest observations (oldest first) and when the last action was taken."""

    observations: tuple[Observation, ...] = ()
    last_action_at: float | None = None
    keep: int = field(default=16, compare=False)

    def record(self, observation: Observation, decision: Decision) -> History:
        kept = (*self.observations, observation)[-self.keep:]
        acted = observation.at if decision.action != "hold" else self.last_action_at
        return History(kept, acted, self.keep)


def history_for(config: PolicyConfig) -> History:
    """An empty history long enough for the config's hysteresis."""
    return History(keep=max(config.add_after, config.remove_after))


def _pressure(obs: Observation, config: PolicyConfig) -> ReasonKind | None:
    if obs.queue_depth > config.add_above:
        return "queue_depth"
    if obs.cpu_percent > config.cpu_above and obs.queue_depth > 0:
        return "cpu"
    return None


def _signal(obs: Observation, config: PolicyConfig) -> _Signal:
    if _pressure(obs, config) is not None:
        return "pressure"
    if obs.queue_depth < config.remove_below and obs.cpu_percent <= config.cpu_above:
        return "idle"
    return "none"


def _streak(signal: _Signal, state: Observation, history: History, config: PolicyConfig) -> int:
    """How many consecutive samples, this one included, show ``signal``."""
    count = 1
    for past in reversed(history.observations):
        if _signal(past, config) != signal:
            break
        count += 1
    return count


def _cooling(state: Observation, history: History, config: PolicyConfig) -> float:
    """Seconds of cooldown left (0 when none)."""
    if history.last_action_at is None:
        return 0.0
    return max(0.0, config.cooldown_s - (state.at - history.last_action_at))


def decide(state: Observation, history: History, config: PolicyConfig) -> Decision:
    n = state.workers
    if n < config.min_workers:
        return Decision("add", f"{n} workers, below the minimum of {config.min_workers}",
                        "bounds")
    if n > config.max_workers:
        return Decision("remove", f"{n} workers, above the maximum of {config.max_workers}",
                        "bounds")
    signal = _signal(state, config)
    if signal == "pressure":
        kind = _pressure(state, config)
        assert kind is not None
        why = (f"queue depth {state.queue_depth} > {config.add_above}" if kind == "queue_depth"
               else f"CPU {state.cpu_percent:.0f}% > {config.cpu_above:.0f}% with "
                    f"{state.queue_depth} waiting")
        if n >= config.max_workers:
            return Decision("hold", f"{why}, but at the maximum of {n} workers", "bounds")
        if state.rate_limited:
            return Decision("hold", f"{why}, but a provider rate limit is the bottleneck",
                            "rate_limited")
        return _gated("add", why, kind, config.add_after, state, history, config)
    if signal == "idle":
        why = f"queue depth {state.queue_depth} < {config.remove_below}"
        if n <= config.min_workers:
            return Decision("hold", f"{why}, at the minimum of {n} workers", "idle")
        return _gated("remove", why, "idle", config.remove_after, state, history, config)
    return Decision("hold", f"queue depth {state.queue_depth}, CPU {state.cpu_percent:.0f}%: "
                            "within bounds", "steady")


def _gated(action: Action, why: str, kind: ReasonKind, samples: int, state: Observation,
           history: History, config: PolicyConfig) -> Decision:
    """``action`` once the condition held for ``samples`` samples and no cooldown runs."""
    signal: _Signal = "pressure" if action == "add" else "idle"
    seen = _streak(signal, state, history, config)
    if seen < samples:
        return Decision("hold", f"{why} for {seen} of {samples} samples", kind)
    left = _cooling(state, history, config)
    if left > 0:
        return Decision("hold", f"{why}, cooling down for {left:.1f} s more", "cooldown")
    return Decision(action, why, kind)
