"""Daily budgets that hold under any concurrency: reserve, then settle, in Lua.

Before a call, its worst case (input estimate x input price + max_tokens x output
price, the same max_tokens sent to the provider) is reserved against every cap that
applies (the tenant's day, everyone's day) in one atomic script: either all
counters take the reservation or none does, so no burst of concurrent first calls
can pass a cap (LiteLLM #34732, #40095). After the call the reservation is settled
to the actual cost. A reservation whose step crashed expires and the reaper settles
it from the ledger.

If Redis loses its data, the day's counters are rebuilt from the store before the
next reservation: spend from the ledger, and the reservations of calls in flight
from their steps (each step records the reservation it holds), so a restart never
resets spend. Rebuilding adds rather than overwrites, so a race can only over-count,
never under-count. Amounts are integer nano-dollars.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from celeriac import redis_keys as keys
from celeriac.accounting.budgets import Budgets
from celeriac.accounting.pricing import usd_to_nanos

_RESERVE = """
if redis.call('EXISTS', KEYS[4]) == 0 then return {-1, 0, 0, 0} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, 0, 0} end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {1, 0, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1])
local n = #KEYS - 4
for i = 1, n do
  local cap = tonumber(ARGV[3 + i])
  if cap > 0 then
    local h = redis.call('HMGET', KEYS[4 + i], 'spent', 'reserved')
    local spent = tonumber(h[1] or '0')
    local reserved = tonumber(h[2] or '0')
    if spent + reserved + tonumber(ARGV[2]) > cap then return {0, i, spent, reserved} end
  end
end
local names = {}
for i = 1, n do
  redis.call('HINCRBY', KEYS[4 + i], 'reserved', ARGV[2])
  redis.call('EXPIRE', KEYS[4 + i], tonumber(ARGV[4 + n]))
  names[i] = KEYS[4 + i]
end
redis.call('HSET', KEYS[1], 'amount', ARGV[2], 'counters', table.concat(names, ' '),
           'day', ARGV[5 + n], 'tenant', ARGV[6 + n])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {1, 0, 0, 0}
"""

_SETTLE = """
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
local amount = redis.call('HGET', KEYS[1], 'amount')
for i = 4, #KEYS do
  if amount then redis.call('HINCRBY', KEYS[i], 'reserved', 0 - tonumber(amount)) end
  redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3]))
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Refusal:
    budget: str  # "tenant daily" | "global daily"
    cap_nanos: int
    spent_nanos: int
    reserved_nanos: int
    wanted_nanos: int

    def message(self, tenant: str) -> str:
        name = {
            "tenant daily": f"tenant {tenant!r} daily",
            "global daily": "global daily",
            "task": "task",
        }[self.budget]
        return (
            f"{name} budget exceeded: spent ${self.spent_nanos / 1e9:.6f} + reserved "
            f"${self.reserved_nanos / 1e9:.6f} + this call up to ${self.wanted_nanos / 1e9:.6f}"
            f" > cap ${self.cap_nanos / 1e9:.6f}"
        )


@dataclass(frozen=True)
class HeldReservation:
    id: str
    tenant: str
    amount_nanos: int


@dataclass(frozen=True)
class DaySpend:
    """What the store says for one day, to rebuild counters from: the ledger's spend,
    and the reservations of calls in flight (recorded on their steps)."""

    by_tenant: dict[str, int]
    in_flight: list[HeldReservation]


class BudgetKeeper:
    def __init__(self, redis: Redis, budgets: Budgets, ledger_day: Callable[[str], DaySpend]):
        self.redis = redis
        self.budgets = budgets
        self.ledger_day = ledger_day
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    def _counters(self, day: str, tenant: str) -> tuple[list[str], list[int], list[str]]:
        counters, caps, names = [], [], []
        for key, cap, name in (
            (keys.budget_tenant(day, tenant), self.budgets.tenant_cap(tenant), "tenant daily"),
            (keys.budget_global(day), self.budgets.daily_usd, "global daily"),
        ):
            counters.append(key)
            caps.append(usd_to_nanos(cap))
            names.append(name)
        return counters, caps, names

    def reserve(self, reservation_id: str, *, day: str, tenant: str,
                amount_nanos: int) -> Refusal | None:
        counters, caps, names = self._counters(day, tenant)
        for _ in range(3):
            result = self._reserve(
                keys=[keys.budget_reservation(reservation_id), keys.BUDGET_RESERVATIONS,
                      keys.budget_settled(day), keys.budget_ready(day), *counters],
                args=[reservation_id, amount_nanos, self.budgets.reservation_ttl_s, *caps,
                      keys.BUDGET_COUNTER_TTL_S, day, tenant],
            )
            status, index, spent, reserved = (int(x) for x in result)
            if status == -1:
                self.rebuild(day)
                continue
            if status == 1:
                return None
            return Refusal(names[index - 1], caps[index - 1], spent, reserved, amount_nanos)
        raise RuntimeError("budget counters could not be rebuilt")

    def settle(self, reservation_id: str, *, day: str, tenant: str, actual_nanos: int) -> bool:
        """Replace a reservation by the actual cost (0 for a failed call). Idempotent."""
        counters, _caps, _names = self._counters(day, tenant)
        done = self._settle(
            keys=[keys.budget_reservation(reservation_id), keys.BUDGET_RESERVATIONS,
                  keys.budget_settled(day), *counters],
            args=[reservation_id, actual_nanos, keys.BUDGET_COUNTER_TTL_S],
        )
        return bool(done)

    def rebuild(self, day: str) -> None:
        """Counters for ``day`` from the ledger, once, under a lock."""
        if not self.redis.set(keys.budget_rebuild_lock(day), "1", nx=True, ex=30):
            deadline = time.monotonic() + 30
            while not self.redis.exists(keys.budget_ready(day)):
                if time.monotonic() > deadline:
                    raise RuntimeError("budget rebuild by another process did not finish")
                time.sleep(0.05)
            return
        try:
            spend = self.ledger_day(day)
            expires = int(self.redis.time()[0]) + self.budgets.reservation_ttl_s
            pipe = self.redis.pipeline(transaction=True)
            for tenant, spent in spend.by_tenant.items():
                pipe.hincrby(keys.budget_tenant(day, tenant), "spent", spent)
            pipe.hincrby(keys.budget_global(day), "spent", sum(spend.by_tenant.values()))
            # Calls in flight keep their reservations, so their settling balances out.
            for held in spend.in_flight:
                if self.redis.exists(keys.budget_reservation(held.id)):
                    continue
                counters = [keys.budget_tenant(day, held.tenant), keys.budget_global(day)]
                for counter in counters:
                    pipe.hincrby(counter, "reserved", held.amount_nanos)
                pipe.hset(keys.budget_reservation(held.id), mapping={
                    "amount": held.amount_nanos, "counters": " ".join(counters),
                    "day": day, "tenant": held.tenant,
                })
                pipe.expire(keys.budget_reservation(held.id),
                            self.budgets.reservation_ttl_s * 2)
                pipe.zadd(keys.BUDGET_RESERVATIONS, {held.id: expires})
            for tenant in {*spend.by_tenant, *(h.tenant for h in spend.in_flight)}:
                pipe.expire(keys.budget_tenant(day, tenant), keys.BUDGET_COUNTER_TTL_S)
            pipe.expire(keys.budget_global(day), keys.BUDGET_COUNTER_TTL_S)
            pipe.set(keys.budget_ready(day), "1", ex=keys.BUDGET_COUNTER_TTL_S)
            pipe.execute()
        finally:
            self.redis.delete(keys.budget_rebuild_lock(day))

    def day_state(self, day: str, tenant: str | None = None) -> dict[str, int]:
        key = keys.budget_tenant(day, tenant) if tenant else keys.budget_global(day)
        raw = self.redis.hgetall(key)
        return {"spent": int(raw.get("spent", 0)), "reserved": int(raw.get("reserved", 0))}

    def expired_reservations(self, limit: int = 500) -> list[str]:
        now = int(self.redis.time()[0])
        return [str(r) for r in self.redis.zrangebyscore(keys.BUDGET_RESERVATIONS, 0, now,
                                                          start=0, num=limit)]

    def reservation(self, reservation_id: str) -> tuple[str, str] | None:
        """(day, tenant) of a live reservation, or None (then it is only dropped)."""
        raw = self.redis.hmget(keys.budget_reservation(reservation_id), "day", "tenant")
        if raw[0] is None or raw[1] is None:
            self.redis.zrem(keys.BUDGET_RESERVATIONS, reservation_id)
            return None
        return str(raw[0]), str(raw[1])
