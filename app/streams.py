"""One watcher per web process for every open event stream.

An event stream used to poll the store on its own, five times a second, and hold a
server thread for up to ten minutes: a few hundred open streams were a few thousand
queries a second, and about seventy of them stalled the whole web tier. Now each
stream only waits on an event; one watcher thread per process asks the store, in a
single query per tick, for the versions of every run being streamed, and wakes the
streams whose run changed. Every few seconds it also asks, in one query, which of
the streams' API keys were revoked, so such a stream ends within seconds, not at
its ten-minute limit.

Under gunicorn's gevent workers (the default) ``threading`` is patched, so the
watcher and the waits are greenlets; under a threaded server they are threads.
Both work the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("app.streams")

POLL_S = 0.25
KEY_RECHECK_S = 2.0


@dataclass(eq=False)
class Subscription:
    """What one stream waits on: its run's latest known state, and its key's."""

    run_id: str
    key_id: int | None
    woken: threading.Event = field(default_factory=threading.Event)
    version: int = -1
    terminal: bool = False
    gone: bool = False
    revoked: bool = False


class RunWatcher:
    """Wakes subscribed streams when their run's version moves or their key is revoked.

    ``versions`` answers {run_id: (version, terminal)} for many ids at once (absent:
    the run is gone); ``revoked`` answers which of many key ids are revoked.
    """

    def __init__(
        self,
        versions: Callable[[Collection[str]], dict[str, tuple[int, bool]]],
        revoked: Callable[[Collection[int]], set[int]],
        *,
        poll_s: float = POLL_S,
        key_recheck_s: float = KEY_RECHECK_S,
    ) -> None:
        self._versions = versions
        self._revoked = revoked
        self._poll_s = poll_s
        self._key_recheck_s = key_recheck_s
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def subscribe(self, run_id: str, key_id: int | None) -> Subscription:
        subscription = Subscription(run_id, key_id)
        with self._lock:
            self._subscriptions.add(subscription)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celeriac-run-watcher", daemon=True
                )
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def _run(self) -> None:
        next_key_check = 0.0
        while True:
            with self._lock:
                watched = list(self._subscriptions)
            if watched:
                now = time.monotonic()
                try:
                    self._check_runs(watched)
                    if now >= next_key_check:
                        next_key_check = now + self._key_recheck_s
                        self._check_keys(watched)
                except Exception as exc:  # a store outage: the streams wait, and retry
                    log.warning("run_watcher_check_failed", error=type(exc).__name__)
            time.sleep(self._poll_s)

    def _check_runs(self, watched: list[Subscription]) -> None:
        states = self._versions({s.run_id for s in watched})
        for subscription in watched:
            state = states.get(subscription.run_id)
            if state is None:
                subscription.gone = True
                subscription.woken.set()
            elif state[0] != subscription.version or state[1] != subscription.terminal:
                subscription.version, subscription.terminal = state
                subscription.woken.set()

    def _check_keys(self, watched: list[Subscription]) -> None:
        key_ids = {s.key_id for s in watched if s.key_id is not None}
        revoked = self._revoked(key_ids)
        for subscription in watched:
            if subscription.key_id in revoked:
                subscription.revoked = True
                subscription.woken.set()
