"""A copy of config/ with extra agents (and models and prices), for tests that need
their own."""

from __future__ import annotations

import shutil
from pathlib import Path

from config.settings import CONFIG_DIR


def config_with_agents(where: Path, agents_toml: str, *, models_toml: str = "",
                       prices_toml: str = "") -> Path:
    """config/ (data files only) copied to ``where``, the given TOML appended to
    agents.toml, models.toml and prices.toml."""
    shutil.copytree(CONFIG_DIR, where, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for name, extra in (("agents", agents_toml), ("models", models_toml),
                        ("prices", prices_toml)):
        if extra:
            with (where / f"{name}.toml").open("a") as handle:
                handle.write(extra)
    return where
