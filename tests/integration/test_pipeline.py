"""The whole path: API -> store -> broker -> real worker -> simulated provider over
HTTP through the official SDKs -> tools -> result."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.support.runs import status, submit, wait_terminal


@pytest.mark.parametrize(
    ("body", "provider_model"),
    [
        ({"input": "What is 17 * 23?"}, "claude-sonnet-4-20250514"),
        ({"input": "What is 17 * 23?", "agent": "openai"}, "gpt-4o-mini"),
        ({"input": "What is 17 * 23?", "model": "gpt-4o"}, "gpt-4o"),
    ],
    ids=["anthropic", "openai-agent", "openai-model-override"],
)
def test_calculator_task_completes_with_391(
    stack: Stack, body: dict[str, str], provider_model: str
) -> None:
    task_id = submit(stack.client, body)
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "completed", doc
    assert "391" in (doc["result"] or "")
    assert doc["progress"] == 100
    assert doc["model"] == provider_model
    kinds = [(s["kind"], s["name"], s["status"]) for s in doc["steps"]]
    assert kinds == [
        ("llm", provider_model, "completed"),
        ("tool", "calculator", "completed"),
        ("llm", provider_model, "completed"),
    ]
    assert doc["steps"][1]["output"] == "17 * 23 = 391"
    assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["output_tokens"] > 0
    assert doc["usage"]["cost_usd"] > 0
    step_cost = sum(s["cost_usd"] for s in doc["steps"])
    assert abs(step_cost - doc["usage"]["cost_usd"]) < 1e-9
    # Each LLM step reached the provider exactly once, through real HTTP.
    step_ids = [s["id"] for s in doc["steps"] if s["kind"] == "llm"]
    seen = [e["step"] for e in stack.sim_log() if e["step"] in step_ids]
    assert sorted(seen) == sorted(step_ids)


def test_parallel_tool_calls_fan_out_and_join(stack: Stack) -> None:
    task_id = submit(stack.client, {"input": "What is 2 + 2 and (3 + 4) * 5?"})
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "completed", doc
    tools = [s for s in doc["steps"] if s["kind"] == "tool"]
    assert len(tools) == 2
    assert {t["output"] for t in tools} == {"2 + 2 = 4", "(3 + 4) * 5 = 35"}
    assert "4" in doc["result"] and "35" in doc["result"]
    assert [s["kind"] for s in doc["steps"]] == ["llm", "tool", "tool", "llm"]


def test_direct_answer_without_tools(stack: Stack) -> None:
    task_id = submit(stack.client, {"input": "Hello there"})
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "completed"
    assert [s["kind"] for s in doc["steps"]] == ["llm"]
    assert "Hello there" in doc["result"]


def test_max_steps_ends_a_looping_agent(stack: Stack) -> None:
    task_id = submit(stack.client, {"input": "[loop] keep going"})
    doc = wait_terminal(stack.client, task_id)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "max_steps_exceeded"
    llm_steps = [s for s in doc["steps"] if s["kind"] == "llm"]
    assert len(llm_steps) == 10  # the default agent's max_steps


def test_status_of_a_fresh_task_is_queued_or_later(stack: Stack) -> None:
    task_id = submit(stack.client, {"input": "Hi"})
    assert status(stack.client, task_id)["status"] in ("queued", "running", "completed")
    wait_terminal(stack.client, task_id)
