"""Limits configuration: ``config/limits.toml``, overridable by environment."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeriac.errors import CeleriacError


@dataclass(frozen=True)
class ModelLimits:
    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True)
class BreakerSettings:
    window_s: int = 60
    min_volume: int = 10
    error_rate: float = 0.5
    consecutive_failures: int = 5
    open_s: float = 30.0
    half_open_trials: int = 2


@dataclass(frozen=True)
class RetrySettings:
    attempts_per_model: int = 4
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0


@dataclass(frozen=True)
class Limits:
    models: dict[str, ModelLimits] = field(default_factory=dict)
    wait_in_place_s: float = 5.0
    fallback_after_wait_s: float = 20.0
    burst: int = 2
    tpm_burst_fraction: float = 0.1
    # The grant -> arrival lag the pace leaves room for; a call that would leave more
    # than half of it after its slot takes a new slot instead.
    jitter_s: float = 0.8
    # Provider feedback multiplies the pace by ``slowdown``; it recovers over recover_s.
    slowdown: float = 0.9
    recover_s: float = 60.0
    # A 429 whose retry-after is at least this long also pauses the model for everyone.
    pause_after_s: float = 10.0
    breaker: BreakerSettings = BreakerSettings()
    retries: RetrySettings = RetrySettings()

    def for_model(self, model: str) -> ModelLimits:
        return self.models.get(model, ModelLimits())


def load_limits(path: Path, override_json: str | None = None) -> Limits:
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise CeleriacError(f"cannot read {path}: {exc}", code="config_error") from exc
    if override_json:
        try:
            override = json.loads(override_json)
        except json.JSONDecodeError as exc:
            raise CeleriacError(f"CELERIAC_LIMITS is not JSON: {exc}", code="config_error")\
                from exc
        # Sections (defaults, breaker, retries) merge key by key; any other key is a model.
        for section in ("defaults", "breaker", "retries"):
            doc[section] = {**doc.get(section, {}), **override.pop(section, {})}
        doc["models"] = {**doc.get("models", {})}
        for name, m in override.items():
            doc["models"][name] = {**doc["models"].get(name, {}), **m}
    defaults = doc.get("defaults", {})
    models = {
        name: ModelLimits(rpm=int(m.get("rpm", 0)), tpm=int(m.get("tpm", 0)))
        for name, m in doc.get("models", {}).items()
    }
    return Limits(
        models=models,
        wait_in_place_s=float(defaults.get("wait_in_place_s", 5.0)),
        fallback_after_wait_s=float(defaults.get("fallback_after_wait_s", 20.0)),
        burst=int(defaults.get("burst", 2)),
        tpm_burst_fraction=float(defaults.get("tpm_burst_fraction", 0.1)),
        jitter_s=float(defaults.get("jitter_s", 0.8)),
        slowdown=float(defaults.get("slowdown", 0.9)),
        recover_s=float(defaults.get("recover_s", 60.0)),
        pause_after_s=float(defaults.get("pause_after_s", 10.0)),
        breaker=BreakerSettings(**doc.get("breaker", {})),
        retries=RetrySettings(**doc.get("retries", {})),
    )
