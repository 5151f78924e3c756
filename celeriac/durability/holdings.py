"""What each worker holds, so that a dead worker's messages come back in seconds.

A step's broker message is acknowledged only after the step is recorded
(``acks_late``). A worker that is SIGKILLed (or OOM-killed, or loses its host)
takes with it the messages it had received and not finished: a step waiting for a
thread, or a retry whose countdown lives in the worker's memory. The broker gives
those back only at its visibility timeout (an hour on Redis). Steps that were
*running* come back sooner through their lease (``celeriac.durability.lease``); steps merely
*held* have no lease, and the reaper could only guess they were lost once they had
waited long enough (``stale_pending_s``), twice as long if the copy it sent was
lost again.

So each worker writes down what it holds: a step id when its message arrives, gone
when its task ends, and a liveness key that its heartbeat renews every third of a
lease. When a worker's liveness key has expired, the reaper takes its list and
sends again every step on it that is still pending and due (``celeriac.durability.reaper``).
A copy sent while the first is still somewhere is harmless: claims are atomic.
"""

from __future__ import annotations

import time

from redis import Redis

from celeriac import redis_keys as keys

# Take a dead worker's list and forget it, in one step: two reapers (or a reaper and
# a worker that was only slow, not dead) never both act on it. A worker that was
# only paused and comes back writes a fresh list from its next message on.
_TAKE = """
local counts = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
local held = {}
for i = 1, #counts, 2 do
  if tonumber(counts[i + 1]) > 0 then held[#held + 1] = counts[i] end
end
return held
"""

# Each message of a step counts once: a retry's message (same step id) can arrive
# before the attempt that sent it has ended, so a release takes back one count and
# removes the step only at zero.
_RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""


class Holdings:
    """One worker's record of the step messages it holds, and its liveness."""

    def __init__(self, redis: Redis, node: str, alive_ttl_s: float):
        self.redis = redis
        self.node = node
        self.alive_ttl_s = max(1, round(alive_ttl_s))
        self._release = redis.register_script(_RELEASE)

    def hold(self, step_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        # Alive from its first message, even before its first heartbeat: a list with
        # no liveness key beside it reads as a dead worker's.
        pipe.set(keys.worker_alive(self.node), round(time.time(), 3), ex=self.alive_ttl_s,
                 nx=True)
        pipe.hincrby(keys.worker_held(self.node), step_id, 1)
        pipe.sadd(keys.WORKERS_HOLDING, self.node)
        pipe.execute()

    def release(self, step_id: str) -> None:
        self._release(keys=[keys.worker_held(self.node)], args=[step_id])

    def beat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.worker_alive(self.node), round(time.time(), 3), ex=self.alive_ttl_s)
        pipe.expire(keys.worker_held(self.node), keys.WORKER_HELD_TTL_S)
        pipe.sadd(keys.WORKERS_HOLDING, self.node)
        pipe.execute()

    def retire(self) -> None:
        """A clean shutdown: the broker gets the unfinished messages back itself."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.worker_held(self.node), keys.worker_alive(self.node))
        pipe.srem(keys.WORKERS_HOLDING, self.node)
        pipe.execute()


def orphaned_steps(redis: Redis) -> dict[str, list[str]]:
    """The steps every dead worker held, by worker, each list taken (and forgotten)
    at once. A worker is dead once its liveness key has expired."""
    nodes = sorted(_text(node) for node in redis.smembers(keys.WORKERS_HOLDING))
    if not nodes:
        return {}
    alive = redis.mget([keys.worker_alive(node) for node in nodes])
    orphans: dict[str, list[str]] = {}
    for node, beat in zip(nodes, alive, strict=True):
        if beat is None:
            held = redis.eval(_TAKE, 2, keys.worker_held(node), keys.WORKERS_HOLDING, node)
            if held:
                orphans[node] = [_text(step_id) for step_id in held]
    return orphans


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
