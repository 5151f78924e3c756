"""Celeriac's domain core: agents, providers, tools, the store and the agent loop.

It imports neither Flask nor Celery and reads no environment: the two entry points
(``app.create_app`` and the Celery app in ``tasks``) build its parts from Settings.
"""

__version__ = "0.1.0"
