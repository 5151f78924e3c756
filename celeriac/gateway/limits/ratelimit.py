"""A global rate limiter: GCRA in Redis, one atomic script per grant.

Each call *reserves the next free slot* for every limit that applies (requests per
minute, and tokens per minute weighted by the call's estimated tokens) and learns
how long to wait for it; the caller sleeps until then. One Redis round trip per
granted call, no polling (FIELD-NOTES: "check, then sleep and re-check" cost 68
calls per grant). Calls are paced (one slot every 60/RPM s, with a small burst),
not counted per clock minute, so no rolling 60 s window ever exceeds the limit.

The limiter's own ledger is exact, but the provider counts arrivals: a call that
reaches it late lands in the same window as the calls granted after it. So the pace
is set below the limit by the burst + 1 and by ``jitter_s`` seconds' worth of calls
(:func:`paced_rpm`), and the caller keeps the lag within that (it takes a fresh slot
when it wakes too late; ``celeriac.gateway.caller``). Each slot is returned (``Grant.slot_s``)
so the caller can stamp it on the request and the provider side can measure the lag.

If the wait would exceed ``max_wait_s`` nothing is reserved and the wait is
returned, so the caller can re-queue the step or fall back to another model.

A call weighing more tokens than the burst allows (``tpm_burst_fraction`` of the TPM)
would never fit: its wait, measured from an empty bucket, never shrinks, and the step
was re-queued with it until the run's time ran out. Such a call goes once the bucket
owes nothing and leaves its excess as debt, which the calls after it wait out, so the
long-run rate still holds. One heavier than the whole TPM a provider refuses outright,
so it is refused here too (:class:`RequestExceedsTPM`), before it waits at all.

Provider feedback (a 429, exhausted rate-limit headers) *slows* a model for every
worker: its pace factor is cut (x ``slowdown``, at most once per ``wait_in_place_s``)
and climbs back linearly over ``recover_s`` (AIMD). Stopping every worker until the
headers' "reset" (when the window is *fully* replenished, up to a minute away) threw
away a minute of capacity for a window one call too full. ``pause`` remains for a
long retry-after.

Times are integer microseconds from Redis's own clock (one clock for every host).
Lua 5.1 prints numbers with 14 significant digits, so values are written with
``string.format('%d')`` to keep all 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis

from celeriac import redis_keys as keys
from celeriac.errors import RequestExceedsTPM
from celeriac.gateway.limits.config import Limits

# KEYS: pause, slowdown, then one bucket per limit. ARGV: max wait, recover_s (µs),
# then (interval, tolerance, units) per bucket. The slowdown's factor f (<= 1) scales
# every interval and tolerance by 1/f; it climbs back linearly to 1 over recover_s
# after its last cut, so it needs no write per grant.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1])
local recover = tonumber(ARGV[2])
local start = now
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > start then start = paused end
local f = 1
local slow = redis.call('HMGET', KEYS[2], 'f', 'at')
if slow[1] then
  f = tonumber(slow[1]) + (1 - tonumber(slow[1])) * (now - tonumber(slow[2])) / recover
  if f > 1 then f = 1 end
end
local n = #KEYS - 2
local tats = {}
for j = 1, n do
  local interval = tonumber(ARGV[3 + 3 * (j - 1)]) / f
  local tolerance = tonumber(ARGV[4 + 3 * (j - 1)]) / f
  local units = tonumber(ARGV[5 + 3 * (j - 1)])
  local tat = tonumber(redis.call('GET', KEYS[2 + j]) or '0')
  if tat < now then tat = now end
  tats[j] = tat
  local allow_at = tat + (units - 1) * interval - tolerance
  -- A call larger than the burst could never fit within the tolerance: it goes once
  -- the bucket owes nothing (tat <= its start) and leaves the rest as debt.
  if allow_at > tat then allow_at = tat end
  if allow_at > start then start = allow_at end
end
local wait = start - now
if wait > max_wait then return {0, wait, start} end
for j = 1, n do
  local interval = tonumber(ARGV[3 + 3 * (j - 1)]) / f
  local units = tonumber(ARGV[5 + 3 * (j - 1)])
  local tat = tats[j]
  if start > tat then tat = start end
  local new_tat = tat + math.floor(units * interval)
  redis.call('SET', KEYS[2 + j], string.format('%d', new_tat), 'PX',
             math.floor((new_tat - now) / 1000) + 1000)
end
return {1, wait, start}
"""

# KEYS: slowdown. ARGV: factor, floor, recover_s (µs), hold (µs). Cuts the pace
# factor at most once per hold: the calls already granted at the old pace report
# the same overload, and must not cut it again.
_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local recover = tonumber(ARGV[3])
local f = 1
local slow = redis.call('HMGET', KEYS[1], 'f', 'at')
if slow[1] then
  local at = tonumber(slow[2])
  f = tonumber(slow[1]) + (1 - tonumber(slow[1])) * (now - at) / recover
  if f > 1 then f = 1 end
  if now - at < tonumber(ARGV[4]) then return string.format('%.6f', f) end
end
f = math.max(tonumber(ARGV[2]), f * tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'f', string.format('%.6f', f), 'at', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.floor(recover / 1000) + 1000)
return string.format('%.6f', f)
"""

_SETTLE = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
local new_tat = tat + tonumber(ARGV[1])
if ttl > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
             math.max(1, ttl + math.floor(tonumber(ARGV[1]) / 1000)))
end
return new_tat
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX',
             math.floor(tonumber(ARGV[1]) / 1000) + 1)
end
return until_us
"""

_US = 1_000_000
# However often the provider pushes back, the pace never falls below this share:
# recovery is linear from the factor, and from nearly 0 it would take the whole
# recover_s to send anything again.
MIN_PACE_FACTOR = 0.1


def paced_rpm(limits: Limits, rpm: int) -> int:
    """Requests per minute actually granted for a limit of ``rpm``: below it by the
    burst (plus one), and by the calls that a grant -> arrival lag of up to
    ``jitter_s`` can shift into the same rolling 60 s window."""
    headroom = limits.burst + 1 + math.ceil(limits.jitter_s * rpm / 60)
    return max(1, rpm - headroom)


@dataclass(frozen=True)
class Grant:
    granted: bool
    wait_s: float
    # The reserved slot as unix time on Redis's clock (the caller stamps it on the
    # request, so the provider-side log shows how late each call arrived).
    slot_s: float = 0.0


class RateLimiter:
    def __init__(self, redis: Redis, limits: Limits):
        self.redis = redis
        self.limits = limits
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)
        self._slow_down = redis.register_script(_SLOW_DOWN)

    def pace_rpm(self, rpm: int) -> int:
        return paced_rpm(self.limits, rpm)

    def _buckets(self, model: str, tokens: int) -> list[tuple[str, float, float, int]]:
        """(key, interval µs per unit, tolerance µs, units) for each limit in force."""
        limit = self.limits.for_model(model)
        buckets = []
        if limit.rpm > 0:
            interval = 60 * _US / self.pace_rpm(limit.rpm)
            burst = self.limits.burst
            buckets.append((keys.rate_bucket(model, "rpm"), interval, burst * interval, 1))
        if limit.tpm > 0 and tokens > 0:
            if tokens > limit.tpm:
                raise RequestExceedsTPM(model, tokens, limit.tpm)
            interval = 60 * _US / limit.tpm
            tolerance = limit.tpm * self.limits.tpm_burst_fraction * interval
            buckets.append((keys.rate_bucket(model, "tpm"), interval, tolerance, tokens))
        return buckets

    def _recover_us(self) -> int:
        return max(1, int(self.limits.recover_s * _US))

    def acquire(self, model: str, tokens: int, *, max_wait_s: float) -> Grant:
        """Reserve the next slot for a call of ``tokens`` (estimated) to ``model``.
        Raises :class:`RequestExceedsTPM` when ``tokens`` alone exceed its TPM."""
        buckets = self._buckets(model, tokens)
        argv: list[float | int] = [int(max_wait_s * _US), self._recover_us()]
        for _key, interval, tolerance, units in buckets:
            argv += [interval, int(tolerance), units]
        granted, wait_us, slot_us = self._acquire(
            keys=[keys.provider_pause(model), keys.provider_slowdown(model),
                  *(b[0] for b in buckets)],
            args=argv,
        )
        return Grant(bool(granted), max(0.0, int(wait_us) / _US), int(slot_us) / _US)

    def acquire_rate(self, name: str, *, per_minute: int, burst: int,
                     max_wait_s: float = 0.0) -> Grant:
        """A plain request-rate bucket (e.g. per API key), same script, no pauses."""
        interval = 60 * _US / max(1, per_minute)
        granted, wait_us, slot_us = self._acquire(
            keys=[keys.provider_pause(f"none:{name}"), keys.provider_slowdown(f"none:{name}"),
                  keys.rate_bucket(name, "rpm")],
            args=[int(max_wait_s * _US), self._recover_us(), interval, int(burst * interval), 1],
        )
        return Grant(bool(granted), max(0.0, int(wait_us) / _US), int(slot_us) / _US)

    def slow_down(self, model: str) -> float:
        """Provider feedback (a 429, or headers showing nothing left): multiply the
        model's pace by ``slowdown`` for every worker, at most once per
        ``wait_in_place_s`` (the calls granted before the cut report the same
        overload); the pace climbs back linearly over ``recover_s``. Returns the new
        factor."""
        factor = self._slow_down(
            keys=[keys.provider_slowdown(model)],
            args=[self.limits.slowdown, MIN_PACE_FACTOR, self._recover_us(),
                  int(self.limits.wait_in_place_s * _US)],
        )
        return float(factor)

    def pace_factor(self, model: str) -> float:
        """The share of the model's pace in force now (1.0 when not slowed down)."""
        raw = self.redis.hmget(keys.provider_slowdown(model), ["f", "at"])
        if raw[0] is None or raw[1] is None:
            return 1.0
        seconds, micros = self.redis.time()
        now = int(seconds) * _US + int(micros)
        f0 = float(raw[0])
        return min(1.0, f0 + (1 - f0) * (now - int(raw[1])) / self._recover_us())

    def settle_tokens(self, model: str, estimated: int, actual: int) -> None:
        """Give back (or take) the difference between the estimate and the usage."""
        limit = self.limits.for_model(model)
        if limit.tpm <= 0 or estimated == actual:
            return
        interval = 60 * _US / limit.tpm
        self._settle(keys=[keys.rate_bucket(model, "tpm")],
                     args=[math.floor((actual - estimated) * interval)])

    def pause(self, model: str, seconds: float) -> None:
        if seconds > 0:
            self._pause(keys=[keys.provider_pause(model)], args=[int(seconds * _US)])

    def paused_for(self, model: str) -> float:
        raw = self.redis.get(keys.provider_pause(model))
        if raw is None:
            return 0.0
        seconds, micros = self.redis.time()
        return max(0.0, (int(raw) - (int(seconds) * _US + int(micros))) / _US)
