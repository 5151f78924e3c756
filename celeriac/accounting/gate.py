"""The budget check for one LLM step: the task's own cap (checked against the
store: a run's LLM steps never run at once) and the daily caps (reserved in Redis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from celeriac.accounting.keeper import BudgetKeeper, Refusal
from celeriac.accounting.pricing import price_of, worst_case_nanos
from celeriac.catalog import ModelSpec
from celeriac.gateway.providers.base import LLMRequest


@dataclass(frozen=True)
class Reservation:
    id: str
    day: str
    tenant: str
    amount_nanos: int


@dataclass
class BudgetGate:
    keeper: BudgetKeeper
    day: str
    tenant: str
    reservation_prefix: str  # step id and attempt: unique per call attempt
    task_cap_nanos: int
    task_spent_nanos: int
    # Persists a reservation beside its step (see Step.reservation).
    on_reserved: Callable[[Reservation], None] | None = None

    def reserve(self, model: ModelSpec, request: LLMRequest,
                input_estimate: int) -> Reservation | Refusal:
        worst = worst_case_nanos(price_of(model), input_estimate, request.max_tokens)
        if self.task_spent_nanos + worst > self.task_cap_nanos:
            return Refusal("task", self.task_cap_nanos, self.task_spent_nanos, 0, worst)
        reservation_id = f"{self.reservation_prefix}:{model.id}"
        refusal = self.keeper.reserve(
            reservation_id, day=self.day, tenant=self.tenant, amount_nanos=worst
        )
        if refusal is not None:
            return refusal
        reservation = Reservation(reservation_id, self.day, self.tenant, worst)
        if self.on_reserved is not None:
            self.on_reserved(reservation)
        return reservation

    def release(self, reservation: Reservation, actual_nanos: int = 0) -> None:
        self.keeper.settle(
            reservation.id, day=reservation.day, tenant=reservation.tenant,
            actual_nanos=actual_nanos,
        )
