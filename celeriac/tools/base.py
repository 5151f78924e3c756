"""Tools: the spec a provider sees, the protocol a tool implements, and the registry.

The registry is the only place a tool is run, and :meth:`ToolRegistry.execute` never
raises: an unknown tool, arguments that break the schema, a ``ToolError`` or a plain
bug all come back as ``ToolResult(is_error=True)``, which the loop hands to the model
so it can correct itself. A tool failure is part of the conversation, not a crash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator

from celeriac.errors import ToolError

log = structlog.get_logger(__name__)

# Both Anthropic and OpenAI reject tool names outside this pattern, so we check it
# when a tool is registered rather than when a provider call fails mid-run.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# A tool's output goes back into the context window on every later step; a runaway
# result (a whole file, a huge listing) must not eat the budget or the window.
MAX_OUTPUT_CHARS = 20_000


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The canonical spec Celeriac sends to providers (adapters reshape it)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass(frozen=True)
class ToolContext:
    """Who is calling a tool. The step id is stable across redeliveries of the same
    step, so a tool with side effects uses :attr:`idempotency_key` to do its effect
    once even when a worker dies after the effect and before the step is recorded."""

    tenant: str
    run_id: str
    step_id: str

    @property
    def idempotency_key(self) -> str:
        return self.step_id


# For a tool run outside any agent step (the CLI, tests, a REPL).
DETACHED = ToolContext(tenant="default", run_id="detached", step_id="detached")


class Tool(Protocol):
    spec: ToolSpec

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        """Run with schema-valid arguments; raise ToolError with a message for the model."""
        ...


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool
    # The step's error code when is_error: "tool_error", or "tool_timeout" when the
    # tool ran past its time limit. None means "tool_error".
    code: str | None = None


class ToolRegistry:
    """Tools by name, each with a compiled validator for its input schema."""

    def __init__(self, tools: Iterable[Tool] = (), *, max_output_chars: int = MAX_OUTPUT_CHARS):
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, Validator] = {}
        self._max_output_chars = max_output_chars
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add a tool. A bad name, a bad schema or a duplicate is a config error: raise now."""
        name = tool.spec.name
        if not TOOL_NAME.match(name):
            raise ToolError(f"invalid tool name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
        if name in self._tools:
            raise ToolError(f"tool {name!r} is already registered")
        schema = tool.spec.input_schema
        # Honour a schema's own "$schema" dialect; MCP servers may send any of them.
        cls = validators.validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise ToolError(f"tool {name!r} has an invalid input schema: {exc.message}") from exc
        self._tools[name] = tool
        self._validators[name] = cls(schema)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ToolError(f"unknown tool {name!r} (available: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Provider-ready specs for the named tools; an unknown name raises ToolError."""
        return [self.get(name).spec.to_dict() for name in names]

    def execute(
        self, name: str, arguments: Mapping[str, Any], context: ToolContext = DETACHED
    ) -> ToolResult:
        """Validate and run one tool call. Never raises: every failure is an error result."""
        try:
            tool = self.get(name)
            problem = self._invalid(name, arguments)
            if problem is not None:
                return ToolResult(f"invalid arguments for {name}: {problem}", is_error=True)
            output = tool.run(dict(arguments), context)
        except ToolError as exc:
            return ToolResult(self._cap(f"{name} failed: {exc.message}"), is_error=True)
        except Exception as exc:
            # A bug in a tool must not end the run, but it must not vanish either.
            log.exception("tool_crashed", tool=name)
            return ToolResult(
                f"{name} failed with an internal error ({type(exc).__name__}).", is_error=True
            )
        if not isinstance(output, str):
            log.error("tool_returned_non_string", tool=name, type=type(output).__name__)
            return ToolResult(f"{name} failed with an internal error (bad output).", is_error=True)
        return ToolResult(self._cap(output), is_error=False)

    def _invalid(self, name: str, arguments: Mapping[str, Any]) -> str | None:
        """A one-line description of the most relevant schema violation, or None."""
        if not isinstance(arguments, Mapping):
            return f"expected a JSON object, got {type(arguments).__name__}"
        error: ValidationError | None = best_match(
            self._validators[name].iter_errors(dict(arguments))
        )
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path)
        message = f"{where}: {error.message}" if where else error.message
        # jsonschema quotes the offending value, which may be the whole oversized input;
        # cut its middle and keep the end, where the verdict ("is too long") is.
        return message if len(message) <= 500 else f"{message[:240]} [...] {message[-240:]}"

    def _cap(self, text: str) -> str:
        if len(text) <= self._max_output_chars:
            return text
        dropped = len(text) - self._max_output_chars
        return f"{text[: self._max_output_chars]}\n[truncated: {dropped} more characters]"
