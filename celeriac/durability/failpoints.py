"""Failpoints: named places where a test can make a worker die, as TiKV's and
FoundationDB's failpoints do. Off unless configured, and then nearly free: an
unconfigured :meth:`Failpoints.hit` is one dictionary lookup.

``CELERIAC_FAILPOINTS="before_call=0.1,after_call=0.1,before_ack=0.05"`` (read once,
by the entry point) makes a worker SIGKILL itself at each named point with that
probability: no warm shutdown, no ack, no ``finally`` blocks, exactly like an OOM
kill or a lost host. Before dying it writes one JSON line to stderr (point, step,
time), so a test can tell which step died where.

The points, in the order a step passes them:

- ``before_call``: an LLM step is about to send its request to the provider;
- ``after_call``: the provider's answer arrived and is journaled, not yet recorded;
- ``before_tool``: a tool step is about to run its tool;
- ``after_tool``: the tool ran (its effect is done) and its result is journaled;
- ``after_record``: the step's outcome is committed; its successors are not sent;
- ``before_ack``: successors sent; the broker message is not yet acknowledged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celeriac.errors import CeleriacError

POINTS = frozenset(
    {"before_call", "after_call", "before_tool", "after_tool", "after_record", "before_ack"}
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Failpoints:
    probabilities: dict[str, float] = field(default_factory=dict)
    # Injectable so the parser and the dice can be tested without dying.
    die: Callable[[], None] = _die
    dice: Callable[[], float] = random.random

    @classmethod
    def parse(cls, spec: str | None) -> Failpoints:
        """``"name=probability,..."``; an unknown name or a bad probability is a
        configuration error, raised at start-up rather than silently ignored."""
        probabilities: dict[str, float] = {}
        for part in (spec or "").split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if name not in POINTS:
                known = ", ".join(sorted(POINTS))
                raise CeleriacError(f"unknown failpoint {name!r} (known: {known})",
                                    code="config_error")
            try:
                probability = float(value) if sep else 1.0
            except ValueError:
                probability = -1.0
            if not 0.0 <= probability <= 1.0:
                raise CeleriacError(f"failpoint {name}: probability must be 0..1, not {value!r}",
                                    code="config_error")
            probabilities[name] = probability
        return cls(probabilities)

    @property
    def enabled(self) -> bool:
        return bool(self.probabilities)

    def hit(self, name: str, step: str = "") -> None:
        probability = self.probabilities.get(name)
        if probability is None or self.dice() >= probability:
            return
        line = json.dumps({"failpoint": name, "step": step, "pid": os.getpid(), "at": time.time()})
        # Straight to the file descriptor: the process is gone a moment later.
        os.write(sys.stderr.fileno(), (line + "\n").encode())
        self.die()


NO_FAILPOINTS = Failpoints()
