"""The simulated provider over real HTTP, through the official anthropic and openai
SDK clients (retries off, so every fault surfaces as the SDK's own error)."""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anthropic
import httpx
import openai
import pytest

from simulator import SimConfig, SimulatorHandle, start_in_thread
from simulator.arithmetic import find_expressions
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = "claude-sonnet-4-20250514"
GPT = "gpt-4o-mini"
KEY = "test-key"

_SCHEMAS = {
    "calculator": {"type": "object", "properties": {"expression": {"type": "string"}}},
    "current_time": {"type": "object", "properties": {}},
    "search_docs": {"type": "object", "properties": {"query": {"type": "string"}}},
}
A_TOOLS: list[Any] = [
    {"name": name, "description": name, "input_schema": schema} for name, schema in _SCHEMAS.items()
]
O_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": name, "description": name, "parameters": schema}}
    for name, schema in _SCHEMAS.items()
]
_DEFAULTS = {k: v for k, v in asdict(SimConfig()).items() if k != "log_path"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(host="127.0.0.1", port=0)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorHandle) -> None:
    sim.configure(**_DEFAULTS)
    sim.reset()


@pytest.fixture
def claude(sim: SimulatorHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


@pytest.fixture
def gpt(sim: SimulatorHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def ask_claude(client: anthropic.Anthropic, messages: Any, **kwargs: Any) -> Any:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    kwargs.setdefault("tools", A_TOOLS)
    kwargs.setdefault("max_tokens", 512)
    return client.messages.create(model=CLAUDE, messages=messages, **kwargs)


def ask_gpt(client: openai.OpenAI, messages: Any, **kwargs: Any) -> Any:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    kwargs.setdefault("tools", O_TOOLS)
    return client.chat.completions.create(model=GPT, messages=messages, **kwargs)


def claude_round_trip(client: anthropic.Anthropic, question: str, results: list[Any]) -> Any:
    """Ask, answer each tool call with the next result, and return the final message."""
    first = ask_claude(client, question)
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == len(results), first
    blocks = [
        {"type": "tool_result", "tool_use_id": call.id, **result}
        for call, result in zip(calls, results, strict=True)
    ]
    history = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": blocks},
    ]
    return ask_claude(client, history)


def log_of(sim: SimulatorHandle) -> list[dict[str, Any]]:
    return list(httpx.get(f"{sim.url}/_sim/log", timeout=5).json())


# --- the script, Anthropic wire ---------------------------------------------------


def test_anthropic_arithmetic_calls_the_calculator(claude: anthropic.Anthropic) -> None:
    message = ask_claude(claude, "What is 17 * 23?")
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert (call.name, call.input) == ("calculator", {"expression": "17 * 23"})
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_anthropic_tool_result_gives_the_final_answer(claude: anthropic.Anthropic) -> None:
    final = claude_round_trip(claude, "What is 17 * 23?", [{"content": "17 * 23 = 391"}])
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "The answer is 391."


def test_anthropic_parallel_calls_for_two_expressions(claude: anthropic.Anthropic) -> None:
    message = ask_claude(claude, "What is 2+2 and (3+4)*5?")
    inputs = [b.input["expression"] for b in message.content if b.type == "tool_use"]
    assert inputs == ["2+2", "(3+4)*5"]
    assert len({b.id for b in message.content}) == 2
    results = [{"content": "2+2 = 4"}, {"content": [{"type": "text", "text": "35"}]}]
    final = claude_round_trip(claude, "What is 2+2 and (3+4)*5?", results)
    assert final.content[0].text == "2+2 = 4; (3+4)*5 = 35."


def test_anthropic_failed_tool_is_reported(claude: anthropic.Anthropic) -> None:
    result = {"content": "division by zero", "is_error": True}
    final = claude_round_trip(claude, "What is 1 / 0?", [result])
    assert "calculator tool failed" in final.content[0].text
    assert "division by zero" in final.content[0].text


def test_anthropic_direct_answer_and_count_tokens(claude: anthropic.Anthropic) -> None:
    message = ask_claude(claude, "Hello there")
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "You said: Hello there"
    counted = claude.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "Hello there"}], tools=A_TOOLS
    )
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_answers_are_deterministic(claude: anthropic.Anthropic) -> None:
    first, second = (ask_claude(claude, "What is 6 * 7?") for _ in range(2))
    assert first.content == second.content and first.usage == second.usage


def test_max_tokens_truncates(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    long_text = "word " * 100
    message = ask_claude(claude, long_text, max_tokens=5)
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)
    assert len(message.content[0].text) == 20
    completion = ask_gpt(gpt, long_text, max_completion_tokens=5)
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ("What time is it?", "current_time", {}),
        ("What is today's date?", "current_time", {}),
        ("docs: retries", "search_docs", {"query": "retries"}),
        ("Please search the docs for rate limits", "search_docs", {"query": "rate limits"}),
    ],
)
def test_other_tools(claude: anthropic.Anthropic, text: str, name: str, arguments: Any) -> None:
    [call] = ask_claude(claude, text).content
    assert (call.name, call.input) == (name, arguments)


def test_words_that_merely_contain_time_are_echoed(claude: anthropic.Anthropic) -> None:
    message = ask_claude(claude, "Explain the timeout setting")
    assert message.content[0].text == "You said: Explain the timeout setting"


def test_tools_are_only_called_when_offered(claude: anthropic.Anthropic) -> None:
    message = ask_claude(claude, "What is 17 * 23?", tools=[])
    assert message.stop_reason == "end_turn"
    assert "cannot calculate 17 * 23" in message.content[0].text
    assert ask_claude(claude, "What time is it?", tools=[]).content[0].type == "text"


def test_loop_marker_never_gives_a_final_answer(claude: anthropic.Anthropic) -> None:
    question = "[loop] keep going"
    history: list[Any] = [{"role": "user", "content": question}]
    for _ in range(3):
        message = ask_claude(claude, history)
        [call] = message.content
        assert (call.name, call.input) == ("calculator", {"expression": "1 + 1"})
        history += [
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "2"}],
            },
        ]


def test_unanswered_tool_call_is_a_bad_request(claude: anthropic.Anthropic) -> None:
    history = [
        {"role": "user", "content": "What is 1 + 1?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_x", "name": "calculator", "input": {}}],
        },
        {"role": "user", "content": "never mind"},
    ]
    with pytest.raises(anthropic.BadRequestError, match="toolu_x"):
        ask_claude(claude, history)


# --- the script, OpenAI wire ------------------------------------------------------


def test_openai_parallel_calls_and_final_answer(gpt: openai.OpenAI) -> None:
    question = "What is 2+2 and (3+4)*5?"
    first = ask_gpt(gpt, question)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.id[:5] for c in calls] == ["call_", "call_"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"expression": "2+2"},
        {"expression": "(3+4)*5"},
    ]
    history = [
        {"role": "user", "content": question},
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "4"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "35"},
    ]
    final = ask_gpt(gpt, history)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "2+2 = 4; (3+4)*5 = 35."
    usage = final.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_single_call_round_trip(gpt: openai.OpenAI) -> None:
    first = ask_gpt(
        gpt,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 17 * 23?"},
        ],
    )
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "calculator"
    history = [
        {"role": "user", "content": "What is 17 * 23?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "17 * 23 = 391"},
    ]
    assert "391" in ask_gpt(gpt, history).choices[0].message.content


def test_openai_direct_answer(gpt: openai.OpenAI) -> None:
    completion = ask_gpt(gpt, "Hello there", tools=openai.omit)
    assert completion.choices[0].message.content == "You said: Hello there"
    assert completion.choices[0].message.tool_calls is None


# --- faults -----------------------------------------------------------------------


def test_forced_429_surfaces_as_rate_limit_error(
    claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    with pytest.raises(anthropic.RateLimitError) as a_info:
        ask_claude(claude, "hi", extra_headers={"x-sim-fault": "429"})
    assert a_info.value.response.headers["retry-after"] == "1"
    assert a_info.value.response.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as o_info:
        ask_gpt(gpt, "hi", extra_headers={"x-sim-fault": "429", "x-sim-retry-after": "7"})
    assert o_info.value.response.headers["retry-after"] == "7"
    assert o_info.value.code == "rate_limit_exceeded"


def test_forced_server_faults(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    with pytest.raises(anthropic.InternalServerError) as a500:
        ask_claude(claude, "hi", extra_headers={"x-sim-fault": "500"})
    assert a500.value.status_code == 500
    with pytest.raises(anthropic.OverloadedError) as a529:
        ask_claude(claude, "hi", extra_headers={"x-sim-fault": "529"})
    assert a529.value.response.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.InternalServerError) as o529:
        ask_gpt(gpt, "hi", extra_headers={"x-sim-fault": "529"})
    assert o529.value.status_code == 503  # Chat Completions has no 529
    with pytest.raises(anthropic.BadRequestError):
        ask_claude(claude, "hi", extra_headers={"x-sim-fault": "418"})  # not a known fault


def test_rpm_limit_is_enforced(sim: SimulatorHandle, claude: anthropic.Anthropic) -> None:
    sim.configure(rpm=5)
    for expected_remaining in range(4, -1, -1):
        raw = claude.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "5"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == str(expected_remaining)
    with pytest.raises(anthropic.RateLimitError) as info:
        ask_claude(claude, "hi")
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(
        headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00")
    )
    assert reset.timestamp() > time.time()
    log = log_of(sim)
    assert [e["status"] for e in log] == [200] * 5 + [429]
    assert log[-1]["fault"] == "rpm"


def test_rpm_limit_openai_headers(sim: SimulatorHandle, gpt: openai.OpenAI) -> None:
    sim.configure(rpm=2)
    raw = gpt.chat.completions.with_raw_response.create(
        model=GPT, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    ask_gpt(gpt, "hi")
    with pytest.raises(openai.RateLimitError) as info:
        ask_gpt(gpt, "hi")
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_forced_faults_do_not_use_up_rpm_slots(
    sim: SimulatorHandle, claude: anthropic.Anthropic
) -> None:
    sim.configure(rpm=1)
    with pytest.raises(anthropic.InternalServerError):
        ask_claude(claude, "hi", extra_headers={"x-sim-fault": "500"})
    assert ask_claude(claude, "hi").stop_reason == "end_turn"


def test_random_faults_replay_from_the_seed(sim: SimulatorHandle) -> None:
    sim.configure(fault_rate=0.5, seed=7)
    body = {"model": CLAUDE, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}

    def statuses() -> list[int]:
        with httpx.Client(base_url=sim.url, headers={"x-api-key": KEY}, timeout=5) as client:
            return [client.post("/v1/messages", json=body).status_code for _ in range(30)]

    first = statuses()
    sim.reset()
    assert statuses() == first
    assert 200 in first and set(first) - {200} <= {429, 500, 503, 529} and set(first) != {200}
    assert all(e["fault"] == "random" for e in log_of(sim) if e["status"] != 200)


def test_fault_rate_header_overrides_config(claude: anthropic.Anthropic) -> None:
    for _ in range(5):
        with pytest.raises(anthropic.APIStatusError) as info:
            ask_claude(claude, "hi", extra_headers={"x-sim-fault-rate": "1"})
        assert info.value.status_code in (429, 500, 503, 529)


def test_latency_header_delays_the_answer(claude: anthropic.Anthropic) -> None:
    started = time.monotonic()
    ask_claude(claude, "hi", extra_headers={"x-sim-latency-ms": "300"})
    assert time.monotonic() - started >= 0.3


def test_timeout_fault_holds_then_hangs_up(
    sim: SimulatorHandle, claude: anthropic.Anthropic
) -> None:
    held = {"x-sim-fault": "timeout", "x-sim-timeout-s": "1", "x-celeriac-step": "held"}
    with pytest.raises(anthropic.APITimeoutError):
        ask_claude(claude, "hi", timeout=0.2, extra_headers=held)
    # The server lets go after its hold; wait for that, so it cannot leak into the
    # next test's log.
    wait_for(lambda: [e for e in log_of(sim) if e["step"] == "held"], timeout=10, what="hold")
    hang = {"x-sim-fault": "timeout", "x-sim-timeout-s": "0.2", "x-celeriac-step": "hang"}
    with pytest.raises(anthropic.APIConnectionError) as info:
        ask_claude(claude, "hi", extra_headers=hang)
    assert not isinstance(info.value, anthropic.APITimeoutError)
    [entry] = [e for e in log_of(sim) if e["step"] == "hang"]
    assert (entry["status"], entry["fault"]) == (None, "forced")


def test_serves_many_slow_requests_at_once(sim: SimulatorHandle) -> None:
    """200 requests, each held 200 ms: one at a time would take 40 s."""
    started = time.monotonic()
    statuses = asyncio.run(asyncio.wait_for(_post_concurrently(sim.port, 200, 200), 30))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 200
    assert elapsed < 5, f"200 concurrent 200 ms requests took {elapsed:.1f}s"


async def _post_concurrently(port: int, count: int, latency_ms: int) -> list[int]:
    # Raw HTTP/1.1 over asyncio streams, so the client's own overhead stays out of
    # the measurement; one connection per request, as 200 independent agents would.
    body = json.dumps(
        {"model": CLAUDE, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    )
    request = (
        "POST /v1/messages HTTP/1.1\r\nhost: sim\r\nx-api-key: k\r\n"
        f"x-sim-latency-ms: {latency_ms}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}"
    ).encode()

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1])

    return await asyncio.gather(*(one() for _ in range(count)))


# --- auth, bad requests, control endpoints -----------------------------------------


def test_missing_key_is_401_in_each_wire_format(sim: SimulatorHandle) -> None:
    body = {"model": CLAUDE, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    anthropic_answer = httpx.post(f"{sim.url}/v1/messages", json=body, timeout=5)
    assert anthropic_answer.status_code == 401
    assert anthropic_answer.json()["error"]["type"] == "authentication_error"
    openai_answer = httpx.post(f"{sim.url}/v1/chat/completions", json=body, timeout=5)
    assert openai_answer.status_code == 401
    assert openai_answer.json()["error"]["code"] == "invalid_api_key"
    assert [e["status"] for e in log_of(sim)] == [401, 401]


def test_required_key_is_checked_and_never_echoed(sim: SimulatorHandle) -> None:
    secret = "s3cret-value"
    sim.configure(require_key=secret)
    wrong = anthropic.Anthropic(base_url=sim.url, api_key="wrong", max_retries=0)
    with wrong, pytest.raises(anthropic.AuthenticationError):
        ask_claude(wrong, "hi")
    with openai.OpenAI(base_url=sim.url + "/v1", api_key=secret, max_retries=0) as right:
        assert ask_gpt(right, "hi").choices[0].message.content == "You said: hi"
    config = httpx.get(f"{sim.url}/_sim/config", timeout=5)
    assert config.json()["require_key"] is True
    assert secret not in config.text and secret not in json.dumps(log_of(sim))


def test_malformed_json_is_400_in_each_wire_format(sim: SimulatorHandle) -> None:
    headers = {"x-api-key": KEY, "authorization": f"Bearer {KEY}"}
    a = httpx.post(f"{sim.url}/v1/messages", content=b"{not json", headers=headers, timeout=5)
    assert a.status_code == 400
    assert a.json()["type"] == "error" and a.json()["error"]["type"] == "invalid_request_error"
    o = httpx.post(f"{sim.url}/v1/chat/completions", content=b"[1,", headers=headers, timeout=5)
    assert o.status_code == 400 and o.json()["error"]["type"] == "invalid_request_error"
    assert [e["status"] for e in log_of(sim)] == [400, 400]


def test_log_records_the_step_header(sim: SimulatorHandle, claude: anthropic.Anthropic) -> None:
    ask_claude(claude, "What is 17 * 23?", extra_headers={"x-celeriac-step": "run-1/step-1"})
    [entry] = log_of(sim)
    assert entry["step"] == "run-1/step-1"
    assert (entry["endpoint"], entry["model"], entry["status"]) == ("anthropic", CLAUDE, 200)
    assert entry["input_tokens"] > 0 and entry["output_tokens"] > 0
    assert entry["request_id"].startswith("req_")
    assert abs(entry["ts"] - time.time()) < 60


def test_control_endpoints(sim: SimulatorHandle, claude: anthropic.Anthropic) -> None:
    with httpx.Client(base_url=sim.url, timeout=5) as control:
        assert control.get("/_sim/health").json() == {"ok": True}
        changed = control.post("/_sim/config", json={"latency_ms": 5, "rpm": 100})
        assert changed.status_code == 200
        assert (changed.json()["latency_ms"], changed.json()["rpm"]) == (5, 100)
        assert control.post("/_sim/config", json={"rpm": "many"}).status_code == 400
        assert control.post("/_sim/config", json={"rmp": 1}).status_code == 400
        ask_claude(claude, "hi")
        assert len(control.get("/_sim/log").json()) == 1
        assert control.post("/_sim/reset").json() == {"ok": True}
        assert control.get("/_sim/log").json() == []
        assert control.get("/v1/messages").status_code == 405
        assert control.get("/nowhere").status_code == 404


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is 17 * 23?", ["17 * 23"]),
        ("What is 2+2 and (3+4)*5?", ["2+2", "(3+4)*5"]),
        ("(what is 2 ** 10)", ["2 ** 10"]),
        ("Is -3 + 5 positive? And 10 % 3.", ["-3 + 5", "10 % 3"]),
        ("GPT-4 has 3 apples (and 4 pears)", []),
        ("Hello there", []),
    ],
)
def test_finding_expressions(text: str, expected: list[str]) -> None:
    assert find_expressions(text) == expected


# --- the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [(["--port", "99999"], "port"), (["--fault-rate", "2"], "fault_rate"), (["--rpm", "x"], "rpm")],
)
def test_cli_rejects_bad_arguments(args: list[str], complaint: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert complaint in done.stderr


def test_cli_serves_logs_to_a_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "simulator", "--port", "0", "--log", str(log_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = _read_line(process.stdout, timeout=20)
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:"), line
        with anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=10) as client:
            ask_claude(client, "hi", extra_headers={"x-celeriac-step": "cli-step"})
        entries = wait_for(
            lambda: log_path.read_text().splitlines() if log_path.exists() else None,
            timeout=10,
            what="a line in the request log file",
        )
        assert json.loads(entries[0])["step"] == "cli-step"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _read_line(stream: IO[str], timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output from the simulator within {timeout}s")
    return stream.readline()
