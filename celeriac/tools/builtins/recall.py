"""Semantic search over the calling tenant's earlier threads (long-term memory)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.errors import CeleriacError, ToolError
from celeriac.tools.base import ToolContext, ToolSpec

if TYPE_CHECKING:
    from celeriac.memory import MemoryIndex

DEFAULT_LIMIT = 3
MAX_LIMIT = 8
# Unrelated passages score about 0.1 and loose paraphrases 0.3 or more (see
# tests/unit/test_memory_index.py); below this MiniLM matches on little but topic words,
# and returning nothing is more useful to the model than returning noise.
MIN_SCORE = 0.2
MAX_PASSAGE_CHARS = 1_500


class Recall:
    spec = ToolSpec(
        name="recall",
        description=(
            "Search your earlier conversations with this user (other threads, not the "
            "current one) by meaning, not just keywords. Use it when the user refers to "
            "something discussed before. Returns the closest passages with their thread ids."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "What to look for, e.g. 'the refund we agreed for order 1142'.",
                    "minLength": 1,
                    "maxLength": 500,
                },
                "limit": {
                    "type": "integer",
                    "description": f"How many passages to return (default {DEFAULT_LIMIT}).",
                    "minimum": 1,
                    "maximum": MAX_LIMIT,
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )

    def __init__(self, memory: Callable[[], MemoryIndex]):
        # A provider, not an index: building the registry must not build the index
        # (or import numpy); the first call does.
        self._memory = memory

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        query = str(arguments["query"])
        limit = int(arguments.get("limit", DEFAULT_LIMIT))
        try:
            # The tenant comes from the step, never from the model's arguments. The
            # current thread is left out: its turns are the context window's business.
            memory = self._memory()
            memory.catch_up(context.tenant)  # what has finished is searchable
            current = memory.current_thread(context.tenant, context.run_id)
            hits = memory.search(
                context.tenant, query, limit, exclude_thread=current, min_score=MIN_SCORE
            )
        except CeleriacError as exc:  # the model package missing, say
            raise ToolError(exc.message) from exc
        if not hits:
            return f"Nothing in earlier conversations matched {query!r}."
        passages = []
        for rank, hit in enumerate(hits, start=1):
            text = hit.text
            if len(text) > MAX_PASSAGE_CHARS:
                text = text[:MAX_PASSAGE_CHARS].rstrip() + " [...]"
            passages.append(f"[{rank}] thread {hit.thread_id} (similarity {hit.score:.2f})\n{text}")
        return "\n\n".join(passages)
