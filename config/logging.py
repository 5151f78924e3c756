"""structlog JSON lines, with ids bound from context and secrets scrubbed.

Called by the entry points only, each with the Redactor of its Settings
(``Redactor(settings.secret_values())``), so every process scrubs every secret the
server holds. Standard-library loggers (Celery, gunicorn, SQLAlchemy) are routed
through the same renderer so every line is JSON.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from celeriac.redaction import KEY_SHAPES, REDACTED, Redactor

_SECRET_FIELDS = {"api_key", "authorization", "x-api-key", "password", "secret", "token"}


def _scrubber(redactor: Redactor) -> structlog.types.Processor:
    redactor = redactor.with_key_shapes()  # logs also lose keys this process never held

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if key.lower() in _SECRET_FIELDS:
                event[key] = REDACTED
            elif isinstance(value, str | dict | list | tuple):
                event[key] = redactor.value(value)
            elif isinstance(value, BaseException):
                event[key] = redactor.text(repr(value))
        return event

    return processor


def redact_log_records(redactor: Redactor) -> None:
    """For processes whose log lines structlog does not render (Flower: tornado's
    formatter): every log record is redacted as it is made, its message and any
    traceback, whichever handler writes it later."""
    redactor = redactor.with_key_shapes()
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if isinstance(record.msg, str):
            try:
                message = record.getMessage()
            except (TypeError, ValueError, KeyError):  # a bad format: keep its parts
                message = f"{record.msg} {record.args!r}"
            record.msg, record.args = redactor.text(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redactor.text(text)
        return record

    logging.setLogRecordFactory(factory)


def _add_trace_ids(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", f"{context.trace_id:032x}")
        event.setdefault("span_id", f"{context.span_id:016x}")
    return event


def configure_logging(level: str = "INFO", redactor: Redactor = KEY_SHAPES) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _scrubber(redactor),
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
