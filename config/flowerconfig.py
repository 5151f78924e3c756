"""Flower's configuration: ``celery -A tasks flower --conf=config/flowerconfig.py``.

Flower executes this file and reads the names below. Flower shows task arguments;
Celeriac's are step ids only, never secrets. It is unauthenticated unless told
otherwise, so outside dev mode it refuses to start without basic auth
(``FLOWER_BASIC_AUTH=user:password``, read by Flower itself). Flower's own
``/metrics`` skips that login, so outside dev mode this file also swaps in a handler
that asks for ``Authorization: Bearer <CELERIAC_METRICS_TOKEN>`` (the exporter's
token, when set) or Flower's login, and answers 401 otherwise; ``/healthcheck``
stays open for probes. Its log lines are redacted like every other process's: no
secret of the server's Settings reaches them. It binds to localhost unless
``CELERIAC_FLOWER_ADDRESS`` says otherwise. For history that survives restarts, set
``CELERIAC_FLOWER_PERSISTENT=1`` (state in ``CELERIAC_FLOWER_DB``, default
var/flower.db).

Every one of these is read through ``config.settings.Settings``, as every other
process reads them: ``CELERIAC_DEV_MODE=off`` means what it means to the web app.
"""

# Tornado sets every top-level name here that is also an option name (port, db,
# ...; tornado's own include logging and help): helpers stay private, and this file
# imports nothing under such a name.
import hmac
from typing import Any

from config.settings import load_settings as _load_settings


def _protect_metrics(token: str | None) -> None:
    """Puts a guarded subclass of Flower's Metrics handler in its URL table.

    Flower reads this file before it builds its tornado Application from
    ``flower.urls.handlers`` (flower/command.py), and flower.app imported that very
    list, so the entry is replaced in place: rebinding the name would change nothing.
    Without the handler to replace this exits, so a Flower upgrade that moves it
    cannot quietly leave /metrics open.
    """
    try:
        from flower import urls
        from flower.views.monitor import Metrics
    except ImportError as exc:
        raise SystemExit(f"Flower: cannot protect /metrics, {exc}") from exc
    from tornado.routing import URLSpec
    from tornado.web import HTTPError

    expected = f"Bearer {token}".encode() if token else None

    # Flower's modules carry no type hints, so mypy sees Metrics as Any.
    class _ProtectedMetrics(Metrics):  # type: ignore[misc]
        async def get(self) -> None:
            given = self.request.headers.get("Authorization", "").encode()
            if expected is None or not hmac.compare_digest(given, expected):
                options = self.application.options
                # With no login configured Flower would let anyone in; /metrics not.
                if not (options.basic_auth or options.auth):
                    raise HTTPError(401)
                # Raises HTTPError(401) itself when basic auth fails; None is an
                # OAuth login without its session cookie.
                if not self.get_current_user():
                    raise HTTPError(401)
            await super().get()

    def swapped(entry: Any) -> Any:
        spec = isinstance(entry, URLSpec)
        handler = entry.handler_class if spec else entry[1]
        # A subclass too: executing this file again replaces the earlier guard.
        if not (isinstance(handler, type) and issubclass(handler, Metrics)):
            return entry
        if spec:
            return URLSpec(entry.regex.pattern, _ProtectedMetrics, entry.kwargs, entry.name)
        return (entry[0], _ProtectedMetrics, *entry[2:])

    handlers = urls.handlers
    replaced = 0
    for i, entry in enumerate(handlers):
        handlers[i] = swapped(entry)
        replaced += handlers[i] is not entry
    if not replaced:
        raise SystemExit("Flower: no Metrics handler in flower.urls.handlers to protect; "
                         "/metrics would be served without credentials")


def _redact_logs(settings: Any) -> None:
    # Imported here: every top-level name of this file is read as a Flower option.
    from celeriac.redaction import Redactor
    from config.logging import redact_log_records

    redact_log_records(Redactor(settings.secret_values()))


_SETTINGS = _load_settings()
_redact_logs(_SETTINGS)
if not _SETTINGS.dev_mode:
    if _SETTINGS.flower_basic_auth is None:
        raise SystemExit(
            "Flower: set FLOWER_BASIC_AUTH=user:password (required outside dev mode, "
            "CELERIAC_DEV_MODE=0)"
        )
    _protect_metrics(
        _SETTINGS.metrics_token.get_secret_value() if _SETTINGS.metrics_token else None
    )

address = _SETTINGS.flower_address
port = _SETTINGS.flower_port
persistent = _SETTINGS.flower_persistent
db = _SETTINGS.flower_db
state_save_interval = 60_000
purge_offline_workers = 600
