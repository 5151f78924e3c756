"""What the loop tells the outside world when steps and runs finish: metrics and the
seed's log events hang off this interface, so the loop stays free of both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StepReport:
    run_id: str
    step_id: str
    kind: str
    name: str
    provider: str | None
    status: str  # "completed" | "failed" | "retrying" | "duplicate"
    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0
    error_code: str | None = None


@dataclass(frozen=True)
class RunReport:
    run_id: str
    agent: str
    model: str
    status: str
    total_steps: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    latency_s: float
    error_code: str | None = None
    webhook_url: str | None = None
    thread_id: str | None = None
    thread_seq: int = 0


class Observer(Protocol):
    def step_finished(self, report: StepReport) -> None: ...

    def run_finished(self, report: RunReport) -> None: ...

    def count(self, event: str, labels: dict[str, str]) -> None:
        """A countable event: rate_limit_wait, rate_limit_requeue, fallback."""
        ...


class NullObserver:
    def step_finished(self, report: StepReport) -> None:
        pass

    def run_finished(self, report: RunReport) -> None:
        pass

    def count(self, event: str, labels: dict[str, str]) -> None:
        pass
