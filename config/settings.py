"""One typed Settings object, read from the environment by the entry points only.

Standard names (``REDIS_URL``, ``DATABASE_URL``, ``ANTHROPIC_API_KEY`` ...) are read as
they are, because other tools and the SDKs use them; everything that is ours carries
the ``CELERIAC_`` prefix.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent
PROJECT_DIR = CONFIG_DIR.parent
VAR_DIR = PROJECT_DIR / "var"

_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_BROKER_SCHEMES = _REDIS_SCHEMES | {"amqp", "amqps", "pyamqp"}


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    # An empty variable (ANTHROPIC_API_KEY="") means unset, not "configured as ''".
    model_config = SettingsConfigDict(
        env_prefix="CELERIAC_", extra="ignore", env_ignore_empty=True
    )

    # Connections. REDIS_URL is resolved by the launcher (local server or embedded)
    # before any process starts, so every process sees the same value.
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    broker_url: str | None = Field(None, validation_alias=_env("BROKER_URL"))
    database_url: str = Field(
        f"sqlite:///{VAR_DIR / 'celeriac.db'}", validation_alias=_env("DATABASE_URL")
    )

    # How long the web tier (and the exporter) waits on a dependency before it
    # answers 503: connecting to the store, one SQL statement, one lock (a row or
    # table lock, SQLite's write lock), a connection from the pool; connecting to
    # Redis, one Redis command. Workers connect within the same time but wait out
    # statements and locks (their work is retried, never lost; see README).
    store_connect_timeout_s: float = 3.0
    store_statement_timeout_s: float = 5.0
    store_lock_timeout_s: float = 3.0
    redis_connect_timeout_s: float = 3.0
    redis_socket_timeout_s: float = 5.0

    # Providers. Keys are secrets: never logged, never put in task arguments.
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=_env("ANTHROPIC_API_KEY")
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    anthropic_base_url: str | None = Field(None, validation_alias=_env("ANTHROPIC_BASE_URL"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    # The simulated provider serves when no key is configured, or when forced on.
    simulate: bool | None = None
    simulator_url: str = "http://127.0.0.1:8765"
    provider_timeout_s: float = 60.0
    # A running step's lease; a heartbeat renews it while its worker lives, so a
    # dead worker's step is taken back within about a lease plus a reaper period.
    step_lease_s: float = 20.0
    # How often beat runs the reaper, which hands steps with an expired lease back.
    reap_interval_s: float = 10.0
    # A step taken back from a dead or hung worker more often than this is
    # dead-lettered (a poison step must not kill workers forever).
    max_recoveries: int = 5
    # Failpoints, for chaos tests only: "before_call=0.1,after_call=0.1,..." makes a
    # worker SIGKILL itself at those points (celeriac/durability/failpoints.py).
    # Never in production.
    failpoints: str | None = None
    # Extra tools, "module:factory,...": each factory takes the Settings and returns
    # tools to register beside the built-ins (agents still list the ones they use).
    extra_tools: str | None = None
    # JSON merged over config/limits.toml, e.g. {"gpt-4o-mini": {"rpm": 600}}.
    limits: str | None = None
    # JSON merged over config/budgets.toml, e.g. {"daily_usd": 1.0}.
    budgets: str | None = None

    # Behaviour.
    config_dir: Path = CONFIG_DIR
    dev_mode: bool = True
    # Per API key: sustained requests per minute and burst, answered 429 past them.
    api_rate_per_minute: int = 1200
    api_burst: int = 100
    # Runs one tenant may have running at once; more wait, queued and retried every
    # 2 s (0: no cap, the default: with a deep backlog the retries cost throughput).
    tenant_max_running: int = 0
    # A turn queued behind a running turn of its thread starts when that one ends
    # (the worker sends it); it also re-checks every this many seconds, in case that
    # message was lost.
    thread_recheck_s: float = 2.0
    # Outside dev mode the exporter requires this bearer token on /metrics.
    metrics_token: SecretStr | None = None
    # Flower (config/flowerconfig.py). FLOWER_BASIC_AUTH ("user:password,...") is read
    # by Flower itself; it is read here too, so that every process agrees on what dev
    # mode and a login are, and so that its passwords are scrubbed like every secret.
    flower_basic_auth: SecretStr | None = Field(
        None, validation_alias=_env("FLOWER_BASIC_AUTH")
    )
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_persistent: bool = False
    flower_db: str = "var/flower.db"
    # Webhooks: the Standard Webhooks signing secret (whsec_...); extra CIDRs or host
    # names a webhook may reach although private; loopback (dev only).
    webhook_secret: SecretStr | None = None
    webhook_allow: str = ""
    webhook_allow_loopback: bool = False
    # The web tier (gunicorn, app/gunicorn_conf.py): worker processes (0: one per
    # core, at least 2) and the connections each holds at once (slow clients and
    # event streams included).
    web_workers: int = 0
    web_worker_connections: int = 10_000
    max_body_bytes: int = 1_000_000
    max_input_chars: int = 100_000
    retention_days: int = 30
    worker_pool: str = "threads"
    worker_concurrency: int = 16
    log_level: str = "INFO"
    # Tracing: "otlp" or "jsonl:<path>"; OTEL_EXPORTER_OTLP_ENDPOINT alone means otlp
    # (the exporter itself reads the endpoint, as OpenTelemetry's standard variable).
    tracing: str | None = None
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in _REDIS_SCHEMES:
            raise ValueError(f"REDIS_URL must be redis://, rediss:// or unix://, not {scheme!r}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = urlparse(value).scheme
        if scheme not in _BROKER_SCHEMES:
            known = sorted(_BROKER_SCHEMES)
            raise ValueError(f"BROKER_URL scheme {scheme!r} is not one of {known}")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # psycopg 3 is the driver we ship; plain postgresql:// URLs mean it.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @property
    def tracing_mode(self) -> str | None:
        if self.tracing:
            return self.tracing
        return "otlp" if self.otel_exporter_otlp_endpoint else None

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def simulated(self) -> bool:
        """True when provider calls go to the simulated provider."""
        if self.simulate is not None:
            return self.simulate
        return self.anthropic_api_key is None and self.openai_api_key is None

    def secret_values(self) -> list[str]:
        """Every secret this server holds, as text: provider keys, the webhook secret
        (and its key part after ``whsec_``), the metrics token, Flower's passwords, and
        the passwords in the Redis, broker, database and provider base URLs (as
        written and decoded).
        The Redactor that keeps them out of everything stored, sent and logged is
        built from this list."""
        held = [self.anthropic_api_key, self.openai_api_key, self.metrics_token,
                self.webhook_secret]
        values = [s.get_secret_value() for s in held if s is not None]
        if self.webhook_secret is not None:
            values.append(self.webhook_secret.get_secret_value().removeprefix("whsec_"))
        if self.flower_basic_auth is not None:
            for login in self.flower_basic_auth.get_secret_value().split(","):
                values.append(login.partition(":")[2])
        for url in (self.redis_url, self.broker_url, self.database_url,
                    self.anthropic_base_url, self.openai_base_url):
            password = urlparse(url).password if url else None
            if password:
                values.extend((password, unquote(password)))
        return [v for v in dict.fromkeys(values) if v]

    def provider_key(self, provider: str) -> str | None:
        secret = {"anthropic": self.anthropic_api_key, "openai": self.openai_api_key}.get(provider)
        return secret.get_secret_value() if secret is not None else None

    def provider_base_url(self, provider: str) -> str | None:
        if self.simulated:
            return self.simulator_url if provider == "anthropic" else self.simulator_url + "/v1"
        return {"anthropic": self.anthropic_base_url, "openai": self.openai_base_url}.get(provider)


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
