"""A circuit breaker per model, its state shared by every worker through Redis.

    closed --(error rate > threshold over the window with a minimum volume,
              or N consecutive failures)--> open
    open --(after open_s)--> half-open: a bounded number of trial calls pass
    half-open --(a trial succeeds)--> closed;  --(a trial fails)--> open again

Why not pybreaker: its Redis storage counts consecutive failures only (no error-rate
window) and is not atomic across processes; each transition here is one Lua script.
While a circuit is open, callers go to the next model of their chain at once instead
of burning retries on a provider that is down.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from celeriac import redis_keys as keys
from celeriac.gateway.limits.config import BreakerSettings

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# KEYS: state hash, window hash.  ARGV: open_s, trials.
_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return {1, 'closed'} end
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
  if now - opened < tonumber(ARGV[1]) then return {0, 'open'} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trials', 0, 'half_open_at', now)
  state = 'half_open'
end
-- A trial that never reported (its caller was throttled, or died) must not hold the
-- circuit half-open forever: after another open period, new trials may go.
local since = tonumber(redis.call('HGET', KEYS[1], 'half_open_at') or '0')
if now - since >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'trials', 0, 'half_open_at', now)
end
local trials = redis.call('HINCRBY', KEYS[1], 'trials', 1)
if trials <= tonumber(ARGV[2]) then return {1, 'half_open'} end
return {0, 'half_open'}
"""

# KEYS: state hash, window hash.  ARGV: ok (1/0), window_s, min_volume, error_rate,
# consecutive_failures.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local ok = ARGV[1] == '1'
local window = tonumber(ARGV[2])
local bucket = tostring(now)
redis.call('HINCRBY', KEYS[2], bucket .. (ok and ':ok' or ':fail'), 1)
redis.call('EXPIRE', KEYS[2], window * 2)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ok then
  redis.call('HSET', KEYS[1], 'consecutive', 0)
  if state == 'half_open' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'trials', 0)
    redis.call('DEL', KEYS[2])
    return 'closed'
  end
  return state
end
local consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', string.format('%d.%06d', t[1], t[2]))
  return 'open'
end
if state == 'open' then return 'open' end
local total, failures = 0, 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local second, kind = string.match(entries[i], '(%d+):(%a+)')
  if tonumber(second) > now - window then
    local n = tonumber(entries[i + 1])
    total = total + n
    if kind == 'fail' then failures = failures + n end
  else
    redis.call('HDEL', KEYS[2], entries[i])
  end
end
local too_many = consecutive >= tonumber(ARGV[5])
local too_often = total >= tonumber(ARGV[3]) and failures / total > tonumber(ARGV[4])
if too_many or too_often then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', string.format('%d.%06d', t[1], t[2]))
  return 'open'
end
return 'closed'
"""


@dataclass(frozen=True)
class CircuitView:
    model: str
    state: str
    consecutive_failures: int
    opened_at: float | None


class CircuitBreaker:
    def __init__(self, redis: Redis, settings: BreakerSettings):
        self.redis = redis
        self.settings = settings
        self._allow = redis.register_script(_ALLOW)
        self._record = redis.register_script(_RECORD)

    def allow(self, model: str) -> bool:
        """May a call to this model go ahead? (Counts half-open trials.)"""
        allowed, _state = self._allow(
            keys=[keys.breaker_state(model), keys.breaker_window(model)],
            args=[self.settings.open_s, self.settings.half_open_trials],
        )
        return bool(allowed)

    def record(self, model: str, ok: bool) -> str:
        s = self.settings
        state = self._record(
            keys=[keys.breaker_state(model), keys.breaker_window(model)],
            args=["1" if ok else "0", s.window_s, s.min_volume, s.error_rate,
                  s.consecutive_failures],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    def view(self, model: str) -> CircuitView:
        raw = self.redis.hgetall(keys.breaker_state(model))
        data = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        opened = data.get("opened_at")
        return CircuitView(
            model=model,
            state=data.get("state", CLOSED),
            consecutive_failures=int(data.get("consecutive", 0)),
            opened_at=float(opened) if opened else None,
        )

    def reset(self, model: str) -> None:
        self.redis.delete(keys.breaker_state(model), keys.breaker_window(model))
