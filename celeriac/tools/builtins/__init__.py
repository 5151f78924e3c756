"""The tools every Celeriac deployment has: calculator, current_time, search_docs."""

from __future__ import annotations

from pathlib import Path

from celeriac.tools.base import ToolRegistry
from celeriac.tools.builtins.calculator import Calculator
from celeriac.tools.builtins.clock import Clock, CurrentTime
from celeriac.tools.builtins.search_docs import SearchDocs

__all__ = ["Calculator", "CurrentTime", "SearchDocs", "builtin_registry"]


def builtin_registry(docs_dir: Path, clock: Clock | None = None) -> ToolRegistry:
    """A registry holding the three built-ins; ``clock`` pins "now" in tests."""
    return ToolRegistry([Calculator(), CurrentTime(clock), SearchDocs(docs_dir)])
