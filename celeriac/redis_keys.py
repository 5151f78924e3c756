"""Every Redis key Celeriac writes, with its lifetime next to it."""

from __future__ import annotations

PREFIX = "celeriac"

# Metric families, aggregated across every process and host. No TTL: Prometheus
# counters must never go backwards, so these live as long as the Redis data.
METRIC_COUNTERS = f"{PREFIX}:metrics:counter"
METRIC_HISTOGRAMS = f"{PREFIX}:metrics:histogram"
METRIC_GAUGES = f"{PREFIX}:metrics:gauge"


def metric_counter(name: str) -> str:
    return f"{METRIC_COUNTERS}:{name}"


def metric_histogram(name: str) -> str:
    return f"{METRIC_HISTOGRAMS}:{name}"


# Redis's epoch: a random id set once (SET NX) in an empty Redis. No TTL: it goes
# only when Redis loses its data, which is how that loss is noticed (celeriac.durability.epoch).
REDIS_EPOCH = f"{PREFIX}:epoch"


# Rate limiter state: a GCRA "theoretical arrival time" per model and unit, a pause
# set from a long provider retry-after, and a slowdown (a hash: the pace factor and
# when it was last cut) set from provider feedback. All expire once they no longer
# hold anything back (the slowdown after the limiter's ``recover_s``).
def rate_bucket(model: str, unit: str) -> str:
    return f"{PREFIX}:ratelimit:{model}:{unit}"


def provider_pause(model: str) -> str:
    return f"{PREFIX}:pause:{model}"


def provider_slowdown(model: str) -> str:
    return f"{PREFIX}:slow:{model}"


# Circuit breaker state per model: a hash, plus per-second outcome counts that
# expire after the breaker's window.
def breaker_state(model: str) -> str:
    return f"{PREFIX}:breaker:{model}"


def breaker_window(model: str) -> str:
    return f"{PREFIX}:breaker:{model}:window"


# Response cache entries; TTL set per agent (``cache_ttl_s``).
def response_cache(digest: str) -> str:
    return f"{PREFIX}:cache:{digest}"


# Budgets. Counters per calendar day (in the budget time zone), so a new day is a
# new key and no reset can overwrite spend. Kept three days, rebuilt from the
# ledger when missing. Reservations live until settled, or until the reaper
# settles them after ``reservation_ttl_s``.
BUDGET_COUNTER_TTL_S = 3 * 24 * 3600
BUDGET_RESERVATIONS = f"{PREFIX}:budget:reservations"


def budget_global(day: str) -> str:
    return f"{PREFIX}:budget:{day}:global"


def budget_tenant(day: str, tenant: str) -> str:
    return f"{PREFIX}:budget:{day}:tenant:{tenant}"


def budget_ready(day: str) -> str:
    return f"{PREFIX}:budget:{day}:ready"


def budget_settled(day: str) -> str:
    return f"{PREFIX}:budget:{day}:settled"


def budget_reservation(reservation_id: str) -> str:
    return f"{PREFIX}:budget:reservation:{reservation_id}"


def budget_rebuild_lock(day: str) -> str:
    return f"{PREFIX}:budget:{day}:rebuild-lock"


# One reaper pass at a time across every worker (two at once send the same copies).
# Held for at most one reaper period, so a worker killed mid-pass delays the next
# pass by no more than that (a 15 s lock once held recovery up 15 s).
REAPER_LOCK = f"{PREFIX}:reaper:lock"

# What each worker holds: the step messages it has taken from the broker and not yet
# finished (running, waiting for a thread, or holding a retry countdown in memory),
# and a liveness key its heartbeat renews. A SIGKILLed worker's messages stay
# unacked in the broker until the visibility timeout (1 h); once its liveness key
# expires (one lease), the reaper re-sends the steps it held. The set names every
# worker with a hash; a hash outlives its worker only until the reaper takes it.
WORKERS_HOLDING = f"{PREFIX}:workers:holding"
WORKER_HELD_TTL_S = 24 * 3600  # renewed by the heartbeat; bounds a forgotten hash


def worker_held(node: str) -> str:
    return f"{PREFIX}:worker:{node}:held"


def worker_alive(node: str) -> str:
    return f"{PREFIX}:worker:{node}:alive"


# The autoscaler's live worker count per host (expires if the autoscaler dies).
AUTOSCALER_WORKERS_PATTERN = f"{PREFIX}:autoscaler:*:workers"


def autoscaler_workers(host: str) -> str:
    return f"{PREFIX}:autoscaler:{host}:workers"


# Step journal: a provider's answer (with its usage, cost and budget reservation) or
# a tool's result, written the moment it arrives, before the step is recorded. A
# step rerun after its worker died finds it and records it instead of paying the
# provider or running the tool again. Deleted once the step is recorded; the TTL
# only bounds what steps that never come back (their run was cancelled) leave
# behind, and is far longer than any recovery (the visibility timeout, 1 h, is the
# slowest path back).
JOURNAL_TTL_S = 6 * 3600


def journal_call(step_id: str, model: str) -> str:
    return f"{PREFIX}:journal:{step_id}:llm:{model}"


def journal_tool(step_id: str) -> str:
    return f"{PREFIX}:journal:{step_id}:tool"


# A provider call on the wire: written just before the request goes out, removed
# when its answer is journaled or it fails. Found by the step's rerun, it means the
# worker died with the request sent and the answer unseen: the provider billed a
# call that the ledger must still charge (celeriac.durability.lost_calls). Same TTL as above.
def journal_wire(step_id: str, model: str) -> str:
    return f"{PREFIX}:journal:{step_id}:wire:{model}"
