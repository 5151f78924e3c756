"""The simulator's runtime settings: one frozen value, replaced whole on change.

Requests take a snapshot of the config when they arrive, so a ``POST /_sim/config``
never changes a request half way through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class ConfigError(ValueError):
    """A setting has the wrong type or is out of range."""


@dataclass(frozen=True)
class SimConfig:
    latency_ms: float = 0.0  # added before every answer
    rpm: int = 0  # accepted requests per rolling 60 s; 0 means no limit
    fault_rate: float = 0.0  # probability of a random 429/500/503/529
    seed: int = 0  # seeds the fault dice, so fault sequences repeat
    retry_after_s: float = 1.0  # retry-after sent with injected 429s
    timeout_s: float = 30.0  # how long the "timeout" fault holds a request
    require_key: str | None = None  # when set, the only API key accepted
    log_path: str | None = None  # JSON-lines copy of the request log
    # Refuse prompts whose input tokens plus max_tokens exceed this, as providers do
    # ("prompt is too long"); 0 means no limit. One window for every model.
    context_window: int = 0

    def __post_init__(self) -> None:
        _check_number("latency_ms", self.latency_ms, upper=600_000)
        _check_int("rpm", self.rpm)
        _check_number("fault_rate", self.fault_rate, upper=1.0)
        _check_int("seed", self.seed, lower=None)
        _check_int("context_window", self.context_window)
        _check_number("retry_after_s", self.retry_after_s, upper=3600)
        _check_number("timeout_s", self.timeout_s, upper=3600)
        for name in ("require_key", "log_path"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty string or null")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SimConfig:
        return cls().updated(values)

    def updated(self, changes: Mapping[str, Any]) -> SimConfig:
        """A copy with ``changes`` applied; unknown names are refused, not ignored,
        so a typo in a test's setup fails loudly."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **dict(changes))

    def public(self) -> dict[str, Any]:
        """The config as JSON, with the required key reduced to whether there is one."""
        data = asdict(self)
        data["require_key"] = self.require_key is not None
        return data


def _check_number(name: str, value: object, *, upper: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number")
    if not math.isfinite(value) or not 0 <= value <= upper:
        raise ConfigError(f"{name} must be between 0 and {upper:g}")


def _check_int(name: str, value: object, *, lower: int | None = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer")
    if lower is not None and value < lower:
        raise ConfigError(f"{name} must be >= {lower}")
