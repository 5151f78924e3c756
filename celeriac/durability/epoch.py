"""Noticing that Redis came back empty (a restart without AOF, a FLUSHALL, a new
server behind the same address), instead of silently starting over.

Redis holds an epoch: a random id set once with SET NX (``keys.REDIS_EPOCH``, no
TTL). A watcher checks it periodically (each worker's heartbeat). No epoch means
an empty Redis; it is a *loss*, not a first start, on evidence: this process had
seen an epoch before, or the store has history (any run) that Redis should have
come with. Only the process whose SET NX creates the new epoch reports the loss:
one ERROR line ``redis_data_lost`` and one count of
``agent_redis_data_losses_total``, however many processes notice. The others see
a new epoch and log ``redis_epoch_changed`` at INFO.

What was lost: queued step messages (the reaper sends them again from the store),
step journals, metrics (which restart from zero, as after any counter reset),
rate-limiter and breaker state. Budget counters are rebuilt from the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog
from redis import Redis
from sqlalchemy import select

from celeriac import redis_keys as keys
from celeriac.observability.metrics import RedisMetrics
from celeriac.store import Database, Run

log = structlog.get_logger("celeriac.durability.epoch")


class EpochWatcher:
    def __init__(self, redis: Redis, metrics: RedisMetrics,
                 store_has_history: Callable[[], bool]):
        self.redis = redis
        self.metrics = metrics
        self.store_has_history = store_has_history
        self.seen: str | None = None

    def check(self) -> bool:
        """One look at the epoch; True when this call found and reported a loss."""
        current = self.redis.get(keys.REDIS_EPOCH)
        if current is not None:
            if self.seen is not None and current != self.seen:
                log.info("redis_epoch_changed", previous_epoch=self.seen, epoch=current)
            self.seen = str(current)
            return False
        lost = self.seen is not None or self.store_has_history()
        epoch = uuid.uuid4().hex
        created = bool(self.redis.set(keys.REDIS_EPOCH, epoch, nx=True))
        previous, self.seen = self.seen, None
        if not created:  # another process made it first: it reports the loss
            return self.check()
        self.seen = epoch
        if not lost:
            return False
        log.error("redis_data_lost", previous_epoch=previous, epoch=epoch,
                  evidence="epoch_seen_before" if previous else "store_has_runs")
        self.metrics.count("redis_data_lost", {})
        return True


def store_has_runs(db: Database) -> bool:
    with db.reader() as session:
        return session.scalar(select(Run.id).limit(1)) is not None
