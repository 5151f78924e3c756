"""Charging the provider calls that workers died with.

A worker killed while its request is on the wire never sees the answer; the
provider has billed the call all the same, and the step's rerun makes (and pays
for) another. No provider offers an idempotency key for completions, so the second
payment cannot be avoided; but it must not be forgotten, or the ledger, the usage
report and every budget would count less than the provider's bill. The journal
notes each call as it goes out (``StepJournal.put_on_wire``); a rerun that finds a
note charges the call at its budget reservation (the worst case: its real usage is
unknowable, and a hard cap must not under-count), in the ledger beside the step's
own row and against the daily budgets, then forgets the note.

Each charge is idempotent (the ledger's unique ``reservation_id`` and the budget
keeper's settled set): a rerun killed halfway through charging charges nothing
twice when the next one comes.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError

from celeriac.accounting.keeper import BudgetKeeper
from celeriac.clock import utcnow
from celeriac.durability.journal import CallOnWire, StepJournal
from celeriac.store import Database, LedgerEntry, Run

log = structlog.get_logger("celeriac.durability.lost_calls")


def charge_id(step_id: str, call: CallOnWire) -> str:
    """The charge's reservation id: unique per lost call."""
    return f"lost:{step_id}:{call.wire_id}"


def lost_step_id(step_id: str, call: CallOnWire) -> str:
    """The ledger's step id for a lost call: beside the step's own row (``<step>``),
    as a marked one (``<step>#w<wire id>``), so a step still has one paid answer."""
    return f"{step_id}#w{call.wire_id}"


def charge_lost_calls(
    db: Database,
    journal: StepJournal,
    keeper: BudgetKeeper | None,
    step_id: str,
    run_id: str,
    models: list[str],
    price_version: str,
) -> int:
    """Charge every call of this step that an earlier attempt left on the wire, and
    return how much was charged (nano-dollars)."""
    charged = 0
    for call in journal.find_on_wire(step_id, models):
        reservation_id = charge_id(step_id, call)
        try:
            with db.session() as s:
                s.add(LedgerEntry(
                    step_id=lost_step_id(step_id, call), reservation_id=reservation_id,
                    run_id=run_id, tenant=call.tenant, day=call.day, model=call.model,
                    provider=call.provider, input_tokens=call.input_tokens,
                    output_tokens=call.max_tokens, cost_nanos=call.worst_nanos,
                    cached=False, price_version=price_version, created_at=utcnow(),
                ))
                run = s.get(Run, run_id, with_for_update=True)
                if run is not None:
                    run.cost_nanos += call.worst_nanos  # the task's own cap sees it too
        except IntegrityError:
            pass  # charged already, by a rerun that died before forgetting the note
        else:
            charged += call.worst_nanos
            log.warning("provider_call_lost_on_the_wire", step=step_id, model=call.model,
                        charged_usd=call.worst_nanos / 1e9, sent_at=call.at)
        if keeper is not None:
            # After the ledger row: the budget counters are rebuilt from the ledger.
            keeper.settle(reservation_id, day=call.day, tenant=call.tenant,
                          actual_nanos=call.worst_nanos)
        journal.clear_on_wire(step_id, call.model)
    return charged
