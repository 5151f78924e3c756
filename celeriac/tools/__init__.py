"""Tools an agent can call: the built-ins, and the registry that runs them.

Quickstart: ``registry = builtin_registry(Path("config/docs"))``, then
``registry.execute("calculator", {"expression": "17 * 23"})``, which never raises.
MCP server tools come from :func:`celeriac.tools.mcp.load_mcp_tools`, kept out of
this namespace so that importing the registry does not import the MCP SDK.
"""

from celeriac.tools.base import MAX_OUTPUT_CHARS, Tool, ToolRegistry, ToolResult, ToolSpec
from celeriac.tools.builtins import builtin_registry

__all__ = [
    "MAX_OUTPUT_CHARS",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "builtin_registry",
]
