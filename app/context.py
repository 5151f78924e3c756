"""Access to the per-app services from views, typed."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from app.queueing import StepQueue
from app.streams import RunWatcher
from celeriac.api_keys import Authenticator
from celeriac.services import Services


@dataclass
class WebContext:
    services: Services
    queue: StepQueue
    authenticator: Authenticator
    run_watcher: RunWatcher


def web() -> WebContext:
    context: WebContext = current_app.extensions["celeriac"]
    return context
