"""The Celery side: ``celery -A tasks worker|beat|flower`` finds ``tasks.app``."""

from tasks.worker import app

__all__ = ["app"]
