"""Running the simulator inside the current process, on its own thread and event loop.

For tests and notebooks: ``with start_in_thread() as sim: ... sim.url ...``. The
server is the same one the CLI runs; only where its event loop lives differs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from simulator.config import SimConfig
from simulator.server import Simulator, serve

T = TypeVar("T")
START_TIMEOUT_S = 10.0


@dataclass
class _Started:
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    port: int
    simulator: Simulator


class SimulatorHandle:
    """A running simulator. State changes hop onto the server's loop, so they are
    as safe as the control endpoints."""

    def __init__(self, host: str, started: _Started, thread: threading.Thread) -> None:
        self.host = host
        self.port = started.port
        self._started = started
        self._thread = thread

    @property
    def url(self) -> str:
        """Base URL for ``anthropic.Anthropic``; OpenAI's client wants ``url + "/v1"``."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop serving and join the thread; calling it twice is harmless."""
        if self._thread.is_alive():
            self._started.loop.call_soon_threadsafe(self._started.stop.set)
            self._thread.join(timeout)

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._on_loop(lambda: self._started.simulator.state.configure(changes).public())

    def reset(self) -> None:
        self._on_loop(self._started.simulator.state.reset)

    def log(self) -> list[dict[str, Any]]:
        return self._on_loop(self._started.simulator.state.log.entries)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(call(), self._started.loop)
        return future.result(START_TIMEOUT_S)


def start_in_thread(host: str = "127.0.0.1", port: int = 0, **config: Any) -> SimulatorHandle:
    """Start a simulator on a daemon thread and return once it accepts connections.

    ``config`` takes the fields of ``SimConfig`` (latency_ms, rpm, fault_rate, seed,
    retry_after_s, timeout_s, require_key, log_path); bad values raise ConfigError
    here, in the caller's thread.
    """
    settings = SimConfig.from_mapping(config)
    ready = threading.Event()
    started: list[_Started] = []
    failed: list[Exception] = []

    async def main() -> None:
        stop = asyncio.Event()

        def on_started(bound: int, simulator: Simulator) -> None:
            started.append(_Started(asyncio.get_running_loop(), stop, bound, simulator))
            ready.set()

        await serve(host, port, settings, stop, on_started)

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception as exc:  # reported to the caller, who is waiting
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="celeriac-simulator", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT_S):
        raise RuntimeError("the simulator did not start in time")
    if not started:
        thread.join(START_TIMEOUT_S)
        if failed:
            raise failed[0]  # e.g. OSError: address already in use
        raise RuntimeError("the simulator stopped before it started")
    return SimulatorHandle(host, started[0], thread)
