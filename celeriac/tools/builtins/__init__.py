"""The tools every Celeriac deployment has: calculator, current_time, search_docs,
and recall when the caller hands over the tenant memory it searches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from celeriac.tools.base import ToolRegistry
from celeriac.tools.builtins.calculator import Calculator
from celeriac.tools.builtins.clock import Clock, CurrentTime
from celeriac.tools.builtins.recall import Recall
from celeriac.tools.builtins.search_docs import SearchDocs

if TYPE_CHECKING:
    from celeriac.memory import MemoryIndex

__all__ = ["Calculator", "CurrentTime", "Recall", "SearchDocs", "builtin_registry"]


def builtin_registry(
    docs_dir: Path,
    clock: Clock | None = None,
    memory: Callable[[], MemoryIndex] | None = None,
) -> ToolRegistry:
    """A registry holding the built-ins; ``clock`` pins "now" in tests. ``memory``
    is called on recall's first use, so passing it loads nothing."""
    registry = ToolRegistry([Calculator(), CurrentTime(clock), SearchDocs(docs_dir)])
    if memory is not None:
        registry.register(Recall(memory))
    return registry
