"""The composition root: build the core's parts from Settings, once per process.

Only the entry points call this (``app.create_app`` and the Celery app's worker
start-up), so nothing connects at import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from redis import Redis

from celeriac.accounting.budgets import Budgets, load_budgets
from celeriac.accounting.keeper import BudgetKeeper
from celeriac.accounting.ledger import day_spend
from celeriac.catalog import Catalog, CatalogSource
from celeriac.durability.epoch import EpochWatcher, store_has_runs
from celeriac.durability.failpoints import Failpoints
from celeriac.durability.journal import StepJournal
from celeriac.errors import CeleriacError
from celeriac.execution.loop import AgentLoop
from celeriac.gateway.cache import ResponseCache
from celeriac.gateway.caller import Caller
from celeriac.gateway.limits.breaker import CircuitBreaker
from celeriac.gateway.limits.config import Limits, load_limits
from celeriac.gateway.limits.ratelimit import RateLimiter
from celeriac.gateway.providers.registry import ProviderEndpoint, ProviderRegistry
from celeriac.gateway.retry import RetryPolicy
from celeriac.observability.metrics import RedisMetrics
from celeriac.redaction import Redactor
from celeriac.store import Database
from celeriac.store.database import Timeouts
from celeriac.tools.base import Tool
from celeriac.tools.builtins import builtin_registry
from celeriac.tools.toolbox import Toolbox
from celeriac.webhooks import UrlPolicy
from config.settings import Settings

if TYPE_CHECKING:
    from celeriac.memory import MemoryIndex

SIMULATED_KEY = "simulated"  # what the SDKs send to the simulated provider


@dataclass
class Services:
    settings: Settings
    # True in processes that answer requests (the web app, the exporter): a store
    # statement or lock wait gives up after a few seconds (Settings.store_*), so an
    # outage or a held lock is a quick 503, never a hung request. Workers wait them
    # out instead: a step that failed on a timeout would only be retried, and the
    # reaper's and retention's long statements must not be cut. Every process
    # bounds connecting, and every Redis command (a hung Redis hangs no thread).
    request_timeouts: bool = False

    @cached_property
    def redactor(self) -> Redactor:
        """Keeps every secret of the settings out of what is stored and sent."""
        return Redactor(self.settings.secret_values())

    @cached_property
    def db(self) -> Database:
        settings = self.settings
        timeouts = Timeouts(connect_s=settings.store_connect_timeout_s)
        if self.request_timeouts:
            timeouts = Timeouts(connect_s=settings.store_connect_timeout_s,
                                statement_s=settings.store_statement_timeout_s,
                                lock_s=settings.store_lock_timeout_s)
        db = Database(settings.database_url, timeouts=timeouts, redactor=self.redactor)
        db.create_schema()
        return db

    def _redis_client(self, url: str) -> Redis:
        return Redis.from_url(
            url, decode_responses=True, health_check_interval=30,
            socket_connect_timeout=self.settings.redis_connect_timeout_s,
            socket_timeout=self.settings.redis_socket_timeout_s,
        )

    @cached_property
    def redis(self) -> Redis:
        return self._redis_client(self.settings.redis_url)

    @cached_property
    def broker_redis(self) -> Redis | None:
        """The broker as a Redis client, for queue depth; None on RabbitMQ."""
        url = self.settings.effective_broker_url
        if url == self.settings.redis_url:
            return self.redis
        if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
            return self._redis_client(url)
        return None

    @cached_property
    def catalog_source(self) -> CatalogSource:
        return CatalogSource(self.settings.config_dir)

    def catalog(self) -> Catalog:
        return self.catalog_source.get()

    @cached_property
    def providers(self) -> ProviderRegistry:
        endpoints: dict[str, ProviderEndpoint] = {}
        for provider in ("anthropic", "openai"):
            key = self.settings.provider_key(provider)
            if self.settings.simulated:
                key = SIMULATED_KEY
            if key:
                endpoints[provider] = ProviderEndpoint(
                    api_key=key, base_url=self.settings.provider_base_url(provider)
                )
        return ProviderRegistry(endpoints, timeout_s=self.settings.provider_timeout_s,
                                redactor=self.redactor)

    @cached_property
    def failpoints(self) -> Failpoints:
        return Failpoints.parse(self.settings.failpoints)

    @cached_property
    def journal(self) -> StepJournal:
        return StepJournal(self.redis)

    @cached_property
    def toolbox(self) -> Toolbox:
        registry = builtin_registry(self.settings.config_dir / "docs", memory=lambda: self.memory)
        for tool in load_extra_tools(self.settings):
            registry.register(tool)
        return Toolbox(registry, self.redactor)

    @cached_property
    def memory(self) -> MemoryIndex:
        """Tenant memory for the recall tool; call ``memory.remember(...)`` when a
        turn finishes. Imported here so a process that never recalls never loads
        numpy or the model (the model itself loads on the first embedding)."""
        from celeriac.memory import MemoryIndex, MiniLMEmbedder

        return MemoryIndex(self.db, MiniLMEmbedder())

    @cached_property
    def metrics(self) -> RedisMetrics:
        return RedisMetrics(self.redis)

    @cached_property
    def epoch(self) -> EpochWatcher:
        return EpochWatcher(self.redis, self.metrics, lambda: store_has_runs(self.db))

    @cached_property
    def limits(self) -> Limits:
        return load_limits(self.settings.config_dir / "limits.toml", self.settings.limits)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, self.limits)

    @cached_property
    def breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.redis, self.limits.breaker)

    @cached_property
    def caller(self) -> Caller:
        return Caller(
            providers=self.providers,
            limiter=self.limiter,
            breaker=self.breaker,
            cache=ResponseCache(self.redis),
            limits=self.limits,
            journal=self.journal,
            failpoints=self.failpoints,
        )

    @cached_property
    def webhook_policy(self) -> UrlPolicy:
        entries = [e for e in self.settings.webhook_allow.split(",") if e.strip()]
        return UrlPolicy.from_entries(
            entries, allow_loopback=self.settings.webhook_allow_loopback
        )

    @cached_property
    def budgets(self) -> Budgets:
        return load_budgets(self.settings.config_dir / "budgets.toml", self.settings.budgets)

    @cached_property
    def keeper(self) -> BudgetKeeper:
        return BudgetKeeper(self.redis, self.budgets, lambda day: day_spend(self.db, day))

    @cached_property
    def loop(self) -> AgentLoop:
        retries = self.limits.retries
        return AgentLoop(
            self.db,
            self.catalog,
            self.caller,
            self.toolbox,
            retry=RetryPolicy(
                attempts_per_model=retries.attempts_per_model,
                backoff_base_s=retries.backoff_base_s,
                backoff_cap_s=retries.backoff_cap_s,
            ),
            keeper=self.keeper,
            budgets=self.budgets,
            price_version=lambda: self.catalog().price_version,
            observer=self.metrics,
            lease_s=self.settings.step_lease_s,
            max_recoveries=self.settings.max_recoveries,
            tenant_max_running=self.settings.tenant_max_running,
            thread_recheck_s=self.settings.thread_recheck_s,
            forward_simulator_headers=self.settings.simulated,
            journal=self.journal,
            failpoints=self.failpoints,
        )


def load_extra_tools(settings: Settings) -> list[Tool]:
    """The tools named by ``CELERIAC_EXTRA_TOOLS`` ("module:factory,..."); a name that
    does not import is a configuration error at start-up."""
    tools: list[Tool] = []
    for ref in (settings.extra_tools or "").split(","):
        if not ref.strip():
            continue
        module_name, _, attr = ref.strip().partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr or "make_tools")
        except (ImportError, AttributeError) as exc:
            raise CeleriacError(f"extra tools {ref!r} cannot be loaded: {exc}",
                                code="config_error") from exc
        tools.extend(factory(settings))
    return tools
