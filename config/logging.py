"""structlog JSON lines, with ids bound from context and secrets scrubbed.

Called by the entry points only. Standard-library loggers (Celery, gunicorn,
SQLAlchemy) are routed through the same renderer so every line is JSON.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,})")
_SECRET_FIELDS = {"api_key", "authorization", "x-api-key", "password", "secret", "token"}


def _scrubber(secrets: Iterable[str]) -> structlog.types.Processor:
    literal = [s for s in secrets if s and len(s) >= 6]

    def scrub(value: str) -> str:
        for secret in literal:
            value = value.replace(secret, "[REDACTED]")
        return _KEY_PATTERN.sub("[REDACTED]", value)

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if key.lower() in _SECRET_FIELDS:
                event[key] = "[REDACTED]"
            elif isinstance(value, str):
                event[key] = scrub(value)
        return event

    return processor


def _add_trace_ids(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", f"{context.trace_id:032x}")
        event.setdefault("span_id", f"{context.span_id:016x}")
    return event


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _scrubber(list(secrets)),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "anthropic", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
