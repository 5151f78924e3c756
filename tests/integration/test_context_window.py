"""The context-window manager, on a real worker and the simulated provider, with a
model whose window is tiny: a long thread is folded into a summary made by the
chain's cheapest model, every request still fits, every tool call keeps its result
(the simulator refuses a request that breaks a pair), and the answer still uses a
fact from the first turn. A prompt that cannot fit at all fails with the sizes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from flask import Flask

from app import create_app
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker

CONTEXT_DB = 5  # shared with test_agent_config: each module flushes it first
WINDOW = 1200
MAX_TOKENS = 128
SUMMARIZER_WINDOW = 4000

EXTRA_MODELS = f"""
[models."tiny-sonnet"]
provider = "anthropic"
context_window = {WINDOW}
max_output_tokens = 256

[models."tiny-haiku"]
provider = "anthropic"
context_window = {SUMMARIZER_WINDOW}
max_output_tokens = 256
"""
EXTRA_PRICES = """
[prices."tiny-sonnet"]
input = 3.00
output = 15.00
cache_write = 3.75
cache_read = 0.30

[prices."tiny-haiku"]
input = 0.80
output = 4.00
cache_write = 1.00
cache_read = 0.08
"""
EXTRA_AGENTS = f"""
[agents.memo]
description = "A tiny context window, to make the context-window manager work."

[[agents.memo.versions]]
version = "1"
model = "tiny-sonnet"
fallbacks = ["tiny-haiku"]
tools = ["calculator"]
max_steps = 6
max_tokens = {MAX_TOKENS}
system_prompt = "You are a helpful assistant."

[agents.rememberer]
description = "Recalls earlier threads of its tenant."

[[agents.rememberer.versions]]
version = "1"
model = "claude-haiku-4-20250514"
tools = ["recall"]
max_steps = 4
"""
# Filler that triggers no script rule of the simulator (no digits, no tool words).
PADDING = " ".join(["lorem ipsum dolor sit amet consectetur"] * 12)
LONG_TASK_PADDING = " ".join(["sed do eiusmod tempor"] * 132)


class Harness:
    def __init__(self, app: Flask, worker: WorkerProcess, simulator: Any):
        self.app, self.worker, self.simulator = app, worker, simulator
        self.client = app.test_client()

    def run(self, text: str, thread_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"input": text, "agent": "memo"}
        if thread_id is not None:
            body["thread_id"] = thread_id
        response = self.client.post("/agent/run", json=body)
        assert response.status_code == 202, response.get_json()
        accepted: dict[str, Any] = response.get_json()
        return accepted

    def log(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.simulator.url}/_sim/log", timeout=5).json())


@pytest.fixture(scope="module")
def harness(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Harness]:
    from simulator import start_in_thread

    tmp = tmp_path_factory.mktemp("context")
    config_dir = config_with_agents(tmp / "config", EXTRA_AGENTS, models_toml=EXTRA_MODELS,
                                    prices_toml=EXTRA_PRICES)
    simulator = start_in_thread()
    httpx.post(f"{simulator.url}/_sim/config", json={"context_window": SUMMARIZER_WINDOW},
               timeout=5).raise_for_status()
    redis_url = redis_server.url(CONTEXT_DB)
    redis.Redis.from_url(redis_url).flushdb()
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env["CELERIAC_CONFIG_DIR"] = str(config_dir)
    app = create_app(settings_from(env), configure_logs=False)
    worker = start_worker(env, tmp, ping=app.extensions["celeriac"].queue.celery,
                          concurrency=4)
    yield Harness(app, worker, simulator)
    worker.stop()
    app.extensions["celeriac"].services.db.dispose()
    simulator.stop()


def test_a_long_thread_is_folded_into_a_summary_and_still_answers(harness: Harness) -> None:
    first = harness.run(f"Please remember this: the launch code is 7421. {PADDING}")
    thread_id = first["thread_id"]
    assert wait_terminal(harness.client, first["task_id"])["status"] == "completed"
    for a, b in ((12, 12), (7, 8), (31, 3), (5, 9)):
        turn = harness.run(f"What is {a} * {b}? {PADDING}", thread_id)
        done = wait_terminal(harness.client, turn["task_id"])
        assert done["status"] == "completed", done
        assert str(a * b) in (done["result"] or "")
    last = harness.run(r"What was the launch code? [recall:launch code is (\d+)]", thread_id)
    done = wait_terminal(harness.client, last["task_id"])
    assert done["status"] == "completed", done
    assert done["result"] == "From earlier: 7421"

    thread = harness.client.get(f"/agent/threads/{thread_id}").get_json()
    steps = [
        step
        for turn in thread["turns"]
        for step in harness.client.get(f"/agent/status/{turn['task_id']}").get_json()["steps"]
    ]
    summaries = [step for step in steps if step["kind"] == "summary"]
    assert summaries, "the thread outgrew the window but nothing was folded"
    for summary in summaries:
        # Made by the cheapest model of the chain, recorded and priced like any call.
        assert summary["status"] == "completed" and summary["model"] == "tiny-haiku"
        assert summary["cost_usd"] > 0 and summary["input_tokens"] > 0
        assert "7421" in summary["output"]
    # Every call to the small model fitted its window (the provider's own count),
    # and no request was refused: a broken tool pair would have been a 400.
    log = harness.log()
    small = [e for e in log if e["model"] == "tiny-sonnet" and e["path"] == "/v1/messages"]
    assert small and all(e["status"] == 200 for e in log)
    assert max(e["input_tokens"] for e in small) + MAX_TOKENS <= WINDOW
    assert sum(1 for e in log if e["model"] == "tiny-haiku") == len(summaries)
    # The prompts were measured by the provider's own count, not only estimated (the
    # estimate is stricter than the simulator's count, so folding alone proves
    # nothing about counting).
    counts = [e for e in log if e["path"] == "/v1/messages/count_tokens"]
    assert counts, "no step asked the provider to count its prompt"
    assert {e["model"] for e in counts} == {"tiny-sonnet"}
    assert all(e["input_tokens"] > 0 for e in counts)


def test_one_long_task_is_folded_mid_run_and_every_tool_call_stays_paired(
    harness: Harness,
) -> None:
    """One task, no thread: its first LLM step fits the window by the provider's
    count (not by the estimate: were the count not used, the task would fail there);
    the eight calculator calls it makes, with their results, push the second over.
    The fold cuts in front of the calls (the summary goes in a user message of its
    own before them), and the answer still quotes every result."""
    from celeriac.conversation.messages import user_text
    from celeriac.conversation.window import estimate_tokens

    before = len(harness.log())
    pairs = ((12, 12), (7, 8), (31, 3), (5, 9), (6, 7), (11, 13), (17, 19), (23, 29))
    question = ", ".join(f"{a} * {b}" for a, b in pairs)
    # Sized by the simulator's count: the question is about 1010 of the 1072 tokens
    # left for the prompt, the calls and results about 390 more.
    text = f"Work these out: {question}. {PADDING} {LONG_TASK_PADDING}"
    services = harness.app.extensions["celeriac"].services
    version = services.catalog().resolve("memo", routing_key="-")
    estimate = estimate_tokens(
        version.system_prompt, services.toolbox.specs(version), [user_text(text)]
    )
    assert estimate > WINDOW - MAX_TOKENS, "resize LONG_TASK_PADDING: the estimate fits"
    task = harness.run(text)
    done = wait_terminal(harness.client, task["task_id"])
    steps = done["steps"]
    summaries = [step for step in steps if step["kind"] == "summary"]
    assert done["status"] == "completed", (done["error"], [s["id"] for s in steps])
    for a, b in pairs:
        assert str(a * b) in (done["result"] or ""), done["result"]

    assert len(summaries) == 1, [step["id"] for step in steps]
    summary = summaries[0]
    turn = int(summary["id"].rsplit("-", 2)[1])  # "<task>-<turn>-summary"
    assert turn > 0, "folded before the first call: the question alone did not fit"
    assert summary["status"] == "completed" and summary["model"] == "tiny-haiku"
    assert summary["arguments"]["covers"] == 1  # the question; the calls are kept
    assert summary["arguments"]["for_step"] == f"{task['task_id']}-{turn}-llm"
    assert "12 * 12" in summary["output"]
    tools = [step for step in steps if step["kind"] == "tool"]
    assert len(tools) == len(pairs) and all(t["status"] == "completed" for t in tools)

    # What the provider saw: every request accepted (a tool result without its call,
    # or a call without its result, is a 400 from the simulator), every prompt to the
    # small model inside its window, and the prompts counted by the provider.
    log = harness.log()[before:]
    assert log and all(e["status"] == 200 for e in log), [
        (e["path"], e["status"]) for e in log if e["status"] != 200
    ]
    calls = [e for e in log if e["path"] == "/v1/messages" and e["model"] == "tiny-sonnet"]
    assert len(calls) == 2  # the calls, then the answer after the fold
    assert max(e["input_tokens"] for e in calls) + MAX_TOKENS <= WINDOW
    counts = [e["input_tokens"] for e in log if e["path"] == "/v1/messages/count_tokens"]
    # The first step by count: under the limit, where the estimate was over it.
    assert counts and counts[0] + MAX_TOKENS <= WINDOW < estimate + MAX_TOKENS


def test_a_prompt_that_cannot_fit_fails_naming_the_sizes(harness: Harness) -> None:
    huge = harness.run("Tell me about this. " + PADDING * 12)
    done = wait_terminal(harness.client, huge["task_id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "context_window_exceeded"
    message = done["error"]["message"]
    assert f"the context window is {WINDOW}" in message
    assert f"max_tokens {MAX_TOKENS} reserved" in message
    assert "tokens (counted)" in message  # the provider's count decided, not the estimate
    # Nothing was sent to the model that could not take it.
    assert not [e for e in harness.log() if e["step"] and e["step"].startswith(huge["task_id"])
                and e["path"] == "/v1/messages"]


def test_the_summarizer_window_is_enforced_by_the_simulator(harness: Harness) -> None:
    """The guard the test above relies on: an oversized request is refused."""
    response = httpx.post(
        f"{harness.simulator.url}/v1/messages",
        headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"},
        json={"model": "tiny-haiku", "max_tokens": 10,
              "messages": [{"role": "user", "content": PADDING * 60}]},
        timeout=10,
    )
    assert response.status_code == 400
    assert "prompt is too long" in response.json()["error"]["message"]


def test_recall_finds_the_tenants_earlier_thread_and_never_anothers(harness: Harness) -> None:
    """Last in this module: it creates API keys, after which every request needs one."""
    from celeriac.api_keys import create_key

    db = harness.app.extensions["celeriac"].services.db
    tenants = {name: {"Authorization": f"Bearer {create_key(db, name)}"} for name in "ab"}

    def run(tenant: str, text: str) -> dict[str, Any]:
        response = harness.client.post(
            "/agent/run", json={"input": text, "agent": "rememberer"}, headers=tenants[tenant]
        )
        assert response.status_code == 202, response.get_json()
        doc: dict[str, Any] = response.get_json()
        return doc

    def finished(tenant: str, task_id: str) -> dict[str, Any]:
        from tests.support.waiting import wait_for

        def done() -> dict[str, Any] | None:
            doc: dict[str, Any] = harness.client.get(
                f"/agent/status/{task_id}", headers=tenants[tenant]
            ).get_json()
            return doc if doc["status"] in ("completed", "failed", "cancelled") else None

        return wait_for(done, timeout=120, interval=0.2, what=f"task {task_id}")

    earlier = [
        run("a", "Our office dog is a corgi named Biscuit."),
        run("a", "The quarterly report is due on a Friday."),
        run("b", "Our office dog is a beagle named Pepper."),
    ]
    for tenant, doc in zip("aab", earlier, strict=True):
        assert finished(tenant, doc["task_id"])["status"] == "completed"
    ask = run("a", '[tool:recall {"query": "what kind of dog do we have in the office"}]')
    doc = finished("a", ask["task_id"])
    assert doc["status"] == "completed", doc
    output = next(step["output"] for step in doc["steps"] if step["kind"] == "tool")
    assert "Biscuit" in output and earlier[0]["thread_id"] in output
    assert "Pepper" not in output  # tenant b's better-worded twin never shows
    first_hit = output.split("[2]")[0]
    assert "Biscuit" in first_hit  # the dog, not the report, ranks first
