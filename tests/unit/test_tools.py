"""The tool registry and the built-in tools, in-process (no network, no subprocess)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celeriac.errors import ToolError
from celeriac.tools import MAX_OUTPUT_CHARS, ToolRegistry, ToolResult, ToolSpec, builtin_registry
from celeriac.tools.base import ToolContext
from celeriac.tools.builtins.docindex import DocIndex, split_sections, tokenize
from celeriac.tools.mcp import qualified_name

DOCS_DIR = Path(__file__).resolve().parents[2] / "config" / "docs"
# Friday 14 March 2025, 13:26:53 UTC (the microseconds must not show).
FIXED_NOW = datetime(2025, 3, 14, 13, 26, 53, 589_793, tzinfo=UTC)


@pytest.fixture
def registry() -> ToolRegistry:
    return builtin_registry(DOCS_DIR, clock=lambda: FIXED_NOW)


class FakeTool:
    """A tool whose behaviour each test chooses."""

    def __init__(self, behaviour: Any, name: str = "fake", schema: dict[str, Any] | None = None):
        self.spec = ToolSpec(name, "A test tool.", schema or {"type": "object"})
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        self.calls.append(arguments)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        return str(self.behaviour)


def calculate(registry: ToolRegistry, expression: str) -> tuple[str, bool]:
    result = registry.execute("calculator", {"expression": expression})
    return result.content, result.is_error


# -- calculator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 * 23", "17 * 23 = 391"),
        ("17*23", "17 * 23 = 391"),
        ("2 + 3 * 4", "2 + 3 * 4 = 14"),
        ("(2 + 3) * 4", "(2 + 3) * 4 = 20"),
        ("2 ** 3 ** 2", "2 ** 3 ** 2 = 512"),
        ("-2 ** 2", "-2 ** 2 = -4"),
        ("10 - 4 - 3", "10 - 4 - 3 = 3"),
        ("7 / 2", "7 / 2 = 3.5"),
        ("6 / 3", "6 / 3 = 2"),
        ("1 / 3", "1 / 3 = 0.333333333333"),
        ("0.1 + 0.2", "0.1 + 0.2 = 0.3"),
        ("7 // 2", "7 // 2 = 3"),
        ("-7 // 2", "-7 // 2 = -4"),
        ("7 % 3", "7 % 3 = 1"),
        ("+5 - -3", "+5 - -3 = 8"),
        ("2 ** -1", "2 ** (-1) = 0.5"),
        ("2 ** 0.5", "2 ** 0.5 = 1.41421356237"),
        ("12345678901234567890 * 10", "12345678901234567890 * 10 = 123456789012345678900"),
    ],
)
def test_calculator_computes(registry: ToolRegistry, expression: str, expected: str) -> None:
    assert calculate(registry, expression) == (expected, False)


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("__import__('os')", "a function call is not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("abs(-3)", "a function call is not allowed"),
        ("x + 1", "the name 'x' is not allowed"),
        ("os.path", "attribute access is not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("().__class__", "attribute access is not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("'a' * 3", "'a' is not a number"),
        ("True + 1", "True is not a number"),
        ("1j * 2", "1j is not a number"),
        ("1 if 1 else 0", "not allowed"),
        ("1 < 2", "not allowed"),
        ("2 ^ 3", "use ** for powers"),
        ("lambda: 1", "not allowed"),
    ],
)
def test_calculator_refuses_anything_but_arithmetic(
    registry: ToolRegistry, expression: str, complaint: str
) -> None:
    content, is_error = calculate(registry, expression)
    assert is_error
    assert complaint in content
    assert "numbers, parentheses and + - * / // % **" in content


@pytest.mark.parametrize(
    "expression",
    ["9 ** 9 ** 9", "10 ** 10 ** 10", "2 ** 1000", "0.5 ** -2000", "10 ** 300 * 10", "1e308 * 10"],
)
def test_calculator_refuses_huge_results_before_computing(
    registry: ToolRegistry, expression: str
) -> None:
    content, is_error = calculate(registry, expression)
    assert is_error
    assert "too large" in content


@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "1 % 0", "0 ** -1", "1 / (2 - 2)"])
def test_calculator_division_by_zero_is_an_error_result(
    registry: ToolRegistry, expression: str
) -> None:
    assert calculate(registry, expression) == ("calculator failed: division by zero", True)


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("1 +", "could not parse"),
        ("   ", "could not parse"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("-" * 150 + "1", "nested more than 100 levels"),
    ],
)
def test_calculator_other_failures(registry: ToolRegistry, expression: str, complaint: str) -> None:
    content, is_error = calculate(registry, expression)
    assert is_error
    assert complaint in content


# -- the registry -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({}, "'expression' is a required property"),
        ({"expression": 17}, "expression: 17 is not of type 'string'"),
        ({"expression": ""}, "expression: '' should be non-empty"),
        ({"expression": "1", "extra": 2}, "'extra' was unexpected"),
        ({"expression": "1" * 501}, "is too long"),
    ],
)
def test_arguments_are_validated_against_the_schema(
    registry: ToolRegistry, arguments: dict[str, Any], complaint: str
) -> None:
    result = registry.execute("calculator", arguments)
    assert result.is_error
    assert result.content.startswith("invalid arguments for calculator: ")
    assert complaint in result.content
    assert len(result.content) < 600  # the oversized value is not echoed in full


def test_invalid_arguments_never_reach_the_tool() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    tool = FakeTool("ok", schema=schema)
    result = ToolRegistry([tool]).execute("fake", {"n": "three"})
    assert result == ToolResult(
        "invalid arguments for fake: n: 'three' is not of type 'integer'", is_error=True
    )
    assert tool.calls == []


def test_arguments_that_are_not_an_object_are_an_error_result(registry: ToolRegistry) -> None:
    result = registry.execute("calculator", ["17 * 23"])  # type: ignore[arg-type]
    assert result.is_error
    assert "expected a JSON object, got list" in result.content


def test_unknown_tool_is_an_error_result_naming_the_available_ones(registry: ToolRegistry) -> None:
    result = registry.execute("rm_rf", {})
    assert result.is_error
    assert "unknown tool 'rm_rf'" in result.content
    assert "calculator, current_time, search_docs" in result.content


def test_tool_error_becomes_a_result_with_its_message() -> None:
    registry = ToolRegistry([FakeTool(ToolError("the printer is on fire"))])
    assert registry.execute("fake", {}) == ToolResult(
        "fake failed: the printer is on fire", is_error=True
    )


def test_an_unexpected_exception_becomes_an_error_result() -> None:
    registry = ToolRegistry([FakeTool(RuntimeError("secret internals"))])
    result = registry.execute("fake", {})
    assert result.is_error
    assert "internal error (RuntimeError)" in result.content
    assert "secret internals" not in result.content


def test_long_output_is_truncated_with_a_note() -> None:
    registry = ToolRegistry([FakeTool("x" * (MAX_OUTPUT_CHARS + 1234))])
    result = registry.execute("fake", {})
    assert not result.is_error
    assert result.content.startswith("x" * MAX_OUTPUT_CHARS + "\n")
    assert result.content.endswith("[truncated: 1234 more characters]")


def test_output_at_the_limit_is_untouched() -> None:
    registry = ToolRegistry([FakeTool("y" * MAX_OUTPUT_CHARS)])
    assert registry.execute("fake", {}).content == "y" * MAX_OUTPUT_CHARS


def test_names_and_specs(registry: ToolRegistry) -> None:
    assert registry.names() == ["calculator", "current_time", "search_docs"]
    specs = registry.specs(["search_docs", "calculator"])
    assert [s["name"] for s in specs] == ["search_docs", "calculator"]
    assert set(specs[1]) == {"name", "description", "input_schema"}
    assert specs[1]["input_schema"]["required"] == ["expression"]
    with pytest.raises(ToolError, match="unknown tool 'nope'"):
        registry.specs(["calculator", "nope"])


@pytest.mark.parametrize(
    ("tool", "complaint"),
    [
        (FakeTool("", name="has space"), "invalid tool name"),
        (FakeTool("", name="x" * 65), "invalid tool name"),
        (FakeTool("", schema={"type": "objekt"}), "invalid input schema"),
        (FakeTool("", name="calculator"), "already registered"),
    ],
)
def test_register_refuses_bad_tools(registry: ToolRegistry, tool: FakeTool, complaint: str) -> None:
    with pytest.raises(ToolError, match=complaint):
        registry.register(tool)


# -- current_time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, "2025-03-14T13:26:53+00:00 (Friday) in UTC"),
        ({"timezone": "UTC"}, "2025-03-14T13:26:53+00:00 (Friday) in UTC"),
        (
            {"timezone": "America/New_York"},
            "2025-03-14T09:26:53-04:00 (Friday) in America/New_York",
        ),
        ({"timezone": "Asia/Kolkata"}, "2025-03-14T18:56:53+05:30 (Friday) in Asia/Kolkata"),
        (
            {"timezone": "Pacific/Kiritimati"},
            "2025-03-15T03:26:53+14:00 (Saturday) in Pacific/Kiritimati",
        ),
    ],
)
def test_current_time_in_a_zone(
    registry: ToolRegistry, arguments: dict[str, Any], expected: str
) -> None:
    assert registry.execute("current_time", arguments) == ToolResult(expected, is_error=False)


def test_current_time_takes_a_naive_clock_as_utc() -> None:
    naive = builtin_registry(DOCS_DIR, clock=lambda: datetime(2024, 2, 29, 23, 30))
    result = naive.execute("current_time", {"timezone": "Europe/Paris"})
    assert result.content == "2024-03-01T00:30:00+01:00 (Friday) in Europe/Paris"


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "EST5"]
)
def test_current_time_rejects_unknown_zones(registry: ToolRegistry, zone: str) -> None:
    result = registry.execute("current_time", {"timezone": zone})
    assert result.is_error
    assert f"unknown time zone {zone!r}" in result.content


def test_current_time_without_a_clock_uses_the_real_one() -> None:
    result = builtin_registry(DOCS_DIR).execute("current_time", {})
    assert not result.is_error
    assert result.content.startswith(f"{datetime.now(UTC):%Y-%m-%d}")


# -- search_docs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "document"),
    [
        ("what priorities can a run have?", "priorities.md"),
        ("is high priority work run before low priority batch jobs", "priorities.md"),
        ("how is the budget enforced and what does a run cost", "budgets.md"),
        ("price per million tokens", "budgets.md"),
        ("retry after a 429 rate limit", "rate-limits.md"),
        ("how do I submit a task over HTTP", "api.md"),
        ("my run stays queued forever", "troubleshooting.md"),
    ],
)
def test_search_docs_finds_the_right_document(
    registry: ToolRegistry, query: str, document: str
) -> None:
    result = registry.execute("search_docs", {"query": query})
    assert not result.is_error
    first = result.content.splitlines()[0]
    assert first.startswith("[1] ")
    assert f"({document})" in first


def test_search_docs_shows_titles_and_respects_the_limit(registry: ToolRegistry) -> None:
    result = registry.execute("search_docs", {"query": "budgets cost", "limit": 2})
    headers = [line for line in result.content.splitlines() if line.startswith("[")]
    assert len(headers) == 2
    assert headers[0].startswith("[1] Budgets and cost")
    assert "[3]" not in result.content


def test_search_docs_without_a_match(registry: ToolRegistry) -> None:
    result = registry.execute("search_docs", {"query": "xylophone quux"})
    assert result == ToolResult(
        "No documentation matched 'xylophone quux'. Try other keywords.", is_error=False
    )


@pytest.mark.parametrize("limit", [0, 9, "3"])
def test_search_docs_limit_is_validated(registry: ToolRegistry, limit: object) -> None:
    result = registry.execute("search_docs", {"query": "budget", "limit": limit})
    assert result.is_error
    assert result.content.startswith("invalid arguments for search_docs: limit: ")


def test_search_docs_with_a_missing_directory(tmp_path: Path) -> None:
    result = builtin_registry(tmp_path / "absent").execute("search_docs", {"query": "budget"})
    assert result.is_error
    assert "does not exist" in result.content


def test_sections_split_on_headings_but_not_inside_code(tmp_path: Path) -> None:
    doc = tmp_path / "queues-and-workers.md"
    doc.write_text(
        "Intro text.\n\n## Starting\n\n```sh\n# not a heading\ncelery worker\n```\n"
        "### Detail\nstays in Starting\n\n## Stopping\nwarm shutdown\n",
        encoding="utf-8",
    )
    sections = split_sections(doc, tmp_path)
    assert [(s.title, s.heading) for s in sections] == [
        ("Queues And Workers", "Queues And Workers"),
        ("Queues And Workers", "Starting"),
        ("Queues And Workers", "Stopping"),
    ]
    assert "# not a heading" in sections[1].text
    assert "stays in Starting" in sections[1].text


def test_tokenize_drops_stopwords_and_folds_plurals() -> None:
    assert tokenize("What are the Priorities of budgets?") == ["priority", "budget"]
    assert tokenize("status class") == ["status", "class"]


def test_rare_terms_outweigh_common_ones(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\nrun run run run celery\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# B\nrun budget\n", encoding="utf-8")
    (tmp_path / "c.md").write_text("# C\nrun\n", encoding="utf-8")
    hits = DocIndex.from_directory(tmp_path).search("run budget", limit=5)
    assert hits[0].passage.path == "b.md"


# -- MCP naming (the subprocess side is in tests/integration) -------------------------


@pytest.mark.parametrize(
    ("server", "tool", "expected"),
    [
        ("echo", "add", "echo__add"),
        ("my server", "get.weather", "my_server__get_weather"),
        ("s", "t" * 80, "s__" + "t" * 61),
    ],
)
def test_mcp_names_are_prefixed_and_provider_safe(server: str, tool: str, expected: str) -> None:
    assert qualified_name(server, tool) == expected
