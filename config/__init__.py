"""Configuration: the typed Settings object, logging setup, and the data files
(agents, models, prices, limits, docs) that ship beside them."""

from config.settings import CONFIG_DIR, Settings, load_settings

__all__ = ["CONFIG_DIR", "Settings", "load_settings"]
