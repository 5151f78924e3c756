"""Keyword search over Celeriac's own documentation (``config/docs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celeriac.errors import ToolError
from celeriac.tools.base import ToolContext, ToolSpec
from celeriac.tools.builtins.docindex import DocIndex

DEFAULT_LIMIT = 3
MAX_LIMIT = 8
# A section longer than this is cut: the model needs the gist, and can search again.
MAX_PASSAGE_CHARS = 1_500


class SearchDocs:
    spec = ToolSpec(
        name="search_docs",
        description=(
            "Search the Celeriac documentation (API, priorities, budgets and cost, rate "
            "limits and retries, troubleshooting) by keywords. Returns the best matching "
            "sections with their document titles."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "Keywords or a question, e.g. 'how are budgets enforced'.",
                    "minLength": 1,
                    "maxLength": 500,
                },
                "limit": {
                    "type": "integer",
                    "description": f"How many sections to return (default {DEFAULT_LIMIT}).",
                    "minimum": 1,
                    "maximum": MAX_LIMIT,
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )

    def __init__(self, docs_dir: Path):
        self._docs_dir = docs_dir
        self._index: DocIndex | None = None

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        query = str(arguments["query"])
        limit = int(arguments.get("limit", DEFAULT_LIMIT))
        hits = self._load().search(query, limit)
        if not hits:
            return f"No documentation matched {query!r}. Try other keywords."
        sections = []
        for rank, hit in enumerate(hits, start=1):
            p = hit.passage
            text = p.text
            if len(text) > MAX_PASSAGE_CHARS:
                text = text[:MAX_PASSAGE_CHARS].rstrip() + " [...]"
            heading = p.title if p.heading == p.title else f"{p.title} > {p.heading}"
            sections.append(f"[{rank}] {heading} ({p.path})\n{text}")
        return "\n\n".join(sections)

    def _load(self) -> DocIndex:
        # Built on first use, not at construction, so building a registry reads no
        # files. Two threads racing here both build the same index; either one wins.
        if self._index is None:
            if not self._docs_dir.is_dir():
                raise ToolError(f"the documentation directory {self._docs_dir} does not exist")
            try:
                self._index = DocIndex.from_directory(self._docs_dir)
            except (OSError, UnicodeDecodeError) as exc:
                raise ToolError(f"could not read the documentation: {exc}") from exc
        return self._index
