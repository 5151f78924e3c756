"""Alembic's environment and revisions for the store: see ``celeriac.store.migrate``."""
