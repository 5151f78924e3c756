"""The catalog: models, prices and agents, loaded from the TOML files in config/.

Files are re-read when they change on disk, so pinning an agent version or rolling
it back is an edit of ``agents.toml``, not a deploy.
"""

from __future__ import annotations

import hashlib
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeriac.errors import CeleriacError, UnknownAgent, UnknownModel

PRIORITY_NAMES = ("high", "normal", "low")


@dataclass(frozen=True)
class Price:
    """USD per one million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider: str
    context_window: int
    max_output_tokens: int
    price: Price | None


@dataclass(frozen=True)
class AgentVersion:
    agent: str
    version: str
    weight: int
    model: str
    fallbacks: tuple[str, ...]
    tools: tuple[str, ...]
    max_steps: int
    max_tokens: int
    priority: str
    budget_usd: float
    system_prompt: str
    mcp_servers: tuple[dict[str, Any], ...] = ()
    cache_ttl_s: int = 0  # > 0: identical requests are served from the response cache
    max_duration_s: int = 900  # wall-clock limit of one task, queueing included
    # Time limit of one tool call (a thread pool cannot kill a stuck tool: past it
    # the step stops waiting and records a tool_timeout error), and per-tool limits.
    tool_timeout_s: float = 60.0
    tool_timeouts: tuple[tuple[str, float], ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.agent}@{self.version}"

    def tool_limit_s(self, tool: str) -> float:
        return dict(self.tool_timeouts).get(tool, self.tool_timeout_s)


@dataclass(frozen=True)
class Agent:
    name: str
    description: str
    versions: tuple[AgentVersion, ...]
    pinned: str | None = None

    def version(self, version: str) -> AgentVersion:
        for candidate in self.versions:
            if candidate.version == version:
                return candidate
        raise UnknownAgent(f"agent {self.name!r} has no version {version!r}", field="agent")

    def choose(self, routing_key: str) -> AgentVersion:
        """Pick a version by traffic weight, stably for one routing key."""
        if self.pinned is not None:
            return self.version(self.pinned)
        live = [v for v in self.versions if v.weight > 0]
        if not live:
            raise UnknownAgent(f"agent {self.name!r} has no live version", field="agent")
        total = sum(v.weight for v in live)
        digest = hashlib.sha256(routing_key.encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
        for candidate in live:
            if point < candidate.weight:
                return candidate
            point -= candidate.weight
        return live[-1]


@dataclass
class Catalog:
    models: dict[str, ModelSpec]
    agents: dict[str, Agent]
    price_version: str = ""

    def model(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModel(
                f"unknown model {model_id!r}; known models: {known}", field="model"
            ) from None

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents))
            raise UnknownAgent(
                f"unknown agent {name!r}; known agents: {known}", field="agent"
            ) from None

    def uses_tool(self, name: str) -> bool:
        """Whether any live version of any agent may call the tool."""
        return any(
            name in version.tools for agent in self.agents.values() for version in agent.versions
        )

    def resolve(self, ref: str, routing_key: str) -> AgentVersion:
        """``name`` picks by weight (or the pinned version); ``name@version`` pins."""
        name, _, version = ref.partition("@")
        agent = self.agent(name)
        return agent.version(version) if version else agent.choose(routing_key)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CeleriacError(f"cannot read {path}: {exc}", code="config_error") from exc


def load_catalog(config_dir: Path) -> Catalog:
    models_doc = _read(config_dir / "models.toml")
    prices_doc = _read(config_dir / "prices.toml")
    agents_doc = _read(config_dir / "agents.toml")
    prices = {
        model_id: Price(
            input=float(p["input"]),
            output=float(p["output"]),
            cache_write=float(p.get("cache_write", p["input"])),
            cache_read=float(p.get("cache_read", p["input"])),
        )
        for model_id, p in prices_doc.get("prices", {}).items()
    }
    models = {
        model_id: ModelSpec(
            id=model_id,
            provider=str(m["provider"]),
            context_window=int(m["context_window"]),
            max_output_tokens=int(m.get("max_output_tokens", 4096)),
            price=prices.get(model_id),
        )
        for model_id, m in models_doc.get("models", {}).items()
    }
    agents: dict[str, Agent] = {}
    for name, a in agents_doc.get("agents", {}).items():
        versions = tuple(_agent_version(name, v) for v in a.get("versions", []))
        for version in versions:
            for model_id in (version.model, *version.fallbacks):
                if model_id not in models:
                    raise CeleriacError(
                        f"agent {version.ref} names unknown model {model_id!r}",
                        code="config_error",
                    )
        pinned = a.get("pinned")
        agents[name] = Agent(
            name=name,
            description=str(a.get("description", "")),
            versions=versions,
            pinned=str(pinned) if pinned is not None else None,
        )
    price_version = f"{prices_doc.get('version', '?')}@{prices_doc.get('effective', '?')}"
    return Catalog(models=models, agents=agents, price_version=price_version)


def _agent_version(name: str, v: dict[str, Any]) -> AgentVersion:
    priority = str(v.get("priority", "normal"))
    if priority not in PRIORITY_NAMES:
        raise CeleriacError(f"agent {name}: bad priority {priority!r}", code="config_error")
    return AgentVersion(
        agent=name,
        version=str(v["version"]),
        weight=int(v.get("weight", 100)),
        model=str(v["model"]),
        fallbacks=tuple(v.get("fallbacks", ())),
        tools=tuple(v.get("tools", ())),
        max_steps=int(v.get("max_steps", 10)),
        max_tokens=int(v.get("max_tokens", 1024)),
        priority=priority,
        budget_usd=float(v.get("budget_usd", 1.0)),
        system_prompt=str(v.get("system_prompt", "")),
        mcp_servers=tuple(v.get("mcp_servers", ())),
        cache_ttl_s=int(v.get("cache_ttl_s", 0)),
        max_duration_s=int(v.get("max_duration_s", 900)),
        tool_timeout_s=_positive(name, "tool_timeout_s", v.get("tool_timeout_s", 60.0)),
        tool_timeouts=tuple(
            (str(tool), _positive(name, f"tool_timeouts.{tool}", limit))
            for tool, limit in dict(v.get("tool_timeouts", {})).items()
        ),
    )


def _positive(agent: str, field: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if number <= 0:
        raise CeleriacError(f"agent {agent}: {field} must be a positive number of seconds",
                            code="config_error")
    return number


@dataclass
class CatalogSource:
    """A catalog that reloads itself when any of its files changes on disk."""

    config_dir: Path
    _stamp: tuple[float, ...] = field(default=(), init=False)
    _catalog: Catalog | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _files(self) -> list[Path]:
        return [self.config_dir / n for n in ("models.toml", "prices.toml", "agents.toml")]

    def get(self) -> Catalog:
        stamp = tuple(p.stat().st_mtime if p.exists() else 0.0 for p in self._files())
        with self._lock:
            if self._catalog is None or stamp != self._stamp:
                self._catalog = load_catalog(self.config_dir)
                self._stamp = stamp
            return self._catalog
