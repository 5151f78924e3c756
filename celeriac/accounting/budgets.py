"""Budget configuration: ``config/budgets.toml``, overridable by environment."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celeriac.errors import CeleriacError


@dataclass(frozen=True)
class Budgets:
    timezone: str = "UTC"
    daily_usd: float = 0.0
    tenant_daily_usd: float = 0.0
    max_task_usd: float = 5.0
    reservation_ttl_s: int = 600
    tenants: dict[str, float] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def tenant_cap(self, tenant: str) -> float:
        return self.tenants.get(tenant, self.tenant_daily_usd)

    def day(self, moment: datetime) -> date:
        return moment.astimezone(self.zone).date()

    def next_reset(self, moment: datetime) -> datetime:
        local = moment.astimezone(self.zone)
        tomorrow = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(),
                                    tzinfo=self.zone)
        return tomorrow


def load_budgets(path: Path, override_json: str | None = None) -> Budgets:
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
        if override_json:
            doc.update(json.loads(override_json))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CeleriacError(f"bad budget configuration: {exc}", code="config_error") from exc
    tenants = {
        name: float(t.get("daily_usd", 0.0)) for name, t in doc.get("tenants", {}).items()
    }
    budgets = Budgets(
        timezone=str(doc.get("timezone", "UTC")),
        daily_usd=float(doc.get("daily_usd", 0.0)),
        tenant_daily_usd=float(doc.get("tenant_daily_usd", 0.0)),
        max_task_usd=float(doc.get("max_task_usd", 5.0)),
        reservation_ttl_s=int(doc.get("reservation_ttl_s", 600)),
        tenants=tenants,
    )
    try:
        budgets.zone  # noqa: B018 - validate the zone name at load time
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CeleriacError(f"unknown budget timezone {budgets.timezone!r}",
                            code="config_error") from exc
    return budgets
