"""A global rate limiter: GCRA in Redis, one atomic script per grant.

Each call *reserves the next free slot* for every limit that applies (requests per
minute, and tokens per minute weighted by the call's estimated tokens) and learns
how long to wait for it; the caller sleeps until then. One Redis round trip per
granted call, no polling (FIELD-NOTES: "check, then sleep and re-check" cost 68
calls per grant). Calls are paced (one slot every 60/RPM s, with a small burst),
not counted per clock minute, so no rolling 60 s window ever exceeds the limit:
the pace is set 2% (at least ``burst + 1``) below the limit, leaving room for the
burst and for jitter between a grant and the call reaching the provider.

If the wait would exceed ``max_wait_s`` nothing is reserved and the wait is
returned, so the caller can re-queue the step or fall back to another model.
Provider feedback (429 retry-after, exhausted rate-limit headers) pauses a model
for every worker until the time given.

Times are integer microseconds from Redis's own clock (one clock for every host).
Lua 5.1 prints numbers with 14 significant digits, so values are written with
``string.format('%d')`` to keep all 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis

from celeriac import keys
from celeriac.limits.config import Limits

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1])
local start = now
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > start then start = paused end
local n = #KEYS - 1
local tats = {}
for j = 1, n do
  local interval = tonumber(ARGV[2 + 3 * (j - 1)])
  local tolerance = tonumber(ARGV[3 + 3 * (j - 1)])
  local units = tonumber(ARGV[4 + 3 * (j - 1)])
  local tat = tonumber(redis.call('GET', KEYS[1 + j]) or '0')
  if tat < now then tat = now end
  tats[j] = tat
  local allow_at = tat + (units - 1) * interval - tolerance
  if allow_at > start then start = allow_at end
end
local wait = start - now
if wait > max_wait then return {0, wait} end
for j = 1, n do
  local interval = tonumber(ARGV[2 + 3 * (j - 1)])
  local units = tonumber(ARGV[4 + 3 * (j - 1)])
  local tat = tats[j]
  if start > tat then tat = start end
  local new_tat = tat + math.floor(units * interval)
  redis.call('SET', KEYS[1 + j], string.format('%d', new_tat), 'PX',
             math.floor((new_tat - now) / 1000) + 1000)
end
return {1, wait}
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


@dataclass(frozen=True)
class Grant:
    granted: bool
    wait_s: float


class RateLimiter:
    def __init__(self, redis: Redis, limits: Limits):
        self.redis = redis
        self.limits = limits
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)

    def _buckets(self, model: str, tokens: int) -> list[tuple[str, float, float, int]]:
        """(key, interval µs per unit, tolerance µs, units) for each limit in force."""
        limit = self.limits.for_model(model)
        buckets = []
        if limit.rpm > 0:
            burst = self.limits.burst
            # Headroom: the burst, plus 2% for the time between a grant and the call's
            # arrival at the provider (thread wake-ups, connection set-up), which can
            # shift a call into the next window.
            pace = max(1, limit.rpm - max(burst + 1, math.ceil(limit.rpm * 0.02)))
            interval = 60 * _US / pace
            buckets.append((keys.rate_bucket(model, "rpm"), interval, burst * interval, 1))
        if limit.tpm > 0 and tokens > 0:
            interval = 60 * _US / limit.tpm
            tolerance = limit.tpm * self.limits.tpm_burst_fraction * interval
            buckets.append((keys.rate_bucket(model, "tpm"), interval, tolerance, tokens))
        return buckets

    def acquire(self, model: str, tokens: int, *, max_wait_s: float) -> Grant:
        buckets = self._buckets(model, tokens)
        argv: list[float | int] = [int(max_wait_s * _US)]
        for _key, interval, tolerance, units in buckets:
            argv += [interval, int(tolerance), units]
        granted, wait_us = self._acquire(
            keys=[keys.provider_pause(model), *(b[0] for b in buckets)], args=argv
        )
        return Grant(bool(granted), max(0.0, int(wait_us) / _US))

    def acquire_rate(self, name: str, *, per_minute: int, burst: int,
                     max_wait_s: float = 0.0) -> Grant:
        """A plain request-rate bucket (e.g. per API key), same script, no pauses."""
        interval = 60 * _US / max(1, per_minute)
        granted, wait_us = self._acquire(
            keys=[keys.provider_pause(f"none:{name}"), keys.rate_bucket(name, "rpm")],
            args=[int(max_wait_s * _US), interval, int(burst * interval), 1],
        )
        return Grant(bool(granted), max(0.0, int(wait_us) / _US))

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
