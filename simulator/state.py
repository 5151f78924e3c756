"""The simulator's mutable state: config, RPM window, fault dice and request log.

All of it belongs to the server's event loop. Code on other threads reaches it
through the control endpoints or ``SimulatorHandle``, which hop onto the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simulator.config import ConfigError, SimConfig
from simulator.faults import FaultDice
from simulator.limiter import RollingWindowLimiter
from simulator.request_log import RequestLog


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.limiter = RollingWindowLimiter(config.rpm)
        self.dice = FaultDice(config.seed)
        self.log = RequestLog(config.log_path)

    def configure(self, changes: Mapping[str, Any]) -> SimConfig:
        new = self.config.updated(changes)
        if new.log_path != self.config.log_path:
            raise ConfigError("log_path is fixed when the server starts")
        self.limiter.set_limit(new.rpm)
        if "seed" in changes:
            self.dice.reseed(new.seed)
        self.config = new
        return new

    def reset(self) -> None:
        """Forget the log and the RPM window, and replay the fault dice from the seed,
        so each test starts from the same place."""
        self.log.clear()
        self.limiter.clear()
        self.dice.reseed(self.config.seed)

    def close(self) -> None:
        self.log.close()
