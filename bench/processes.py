"""Child processes the bench starts, each in its own process group, so that stopping
one stops everything it started (gunicorn's workers, for example) and nothing else.

Every process's output goes to a log file; when a process dies early or never gets
ready, the error quotes the end of that log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")


class BenchError(RuntimeError):
    """The bench could not set up or finish a measurement."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the process and its children."""
        try:
            proc = psutil.Process(self.popen.pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
            return total
        except psutil.Error:
            return 0.0

    def rss_mb(self) -> float:
        try:
            return float(psutil.Process(self.popen.pid).memory_info().rss) / 2**20
        except psutil.Error:
            return 0.0

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}"
            )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the whole group (a warm shutdown), then SIGKILL after grace_s."""
        if self.alive() and grace_s > 0:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace_s)
        # Whatever is left of the group (the leader, or children it left behind).
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)  # the group id is the leader's pid


def spawn(name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path,
          cwd: Path) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see Process.stop
        )
    return Process(name, popen, log_path)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    watch: Sequence[Process] = (),
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout``, or
    at once when one of the ``watch`` processes has died."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        for process in watch:
            process.check_alive()
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
