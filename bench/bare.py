"""The baseline: the same step chain as a Celeriac agent task, as plain Celery tasks
with none of Celeriac's logic.

    celery -A bench.bare worker -Q high,default,low -P threads -c 64

Each step is one Celery task that makes its call and enqueues the next step, as
Celeriac's steps do, but the whole conversation travels in the message (no store,
no claim, no record, no metrics, no result backend). LLM steps call the simulator
through the official Anthropic SDK, the same client Celeriac uses; a tool step
evaluates the calculator expression in-process. After ``llm_steps`` LLM steps the
chain stops and pushes its timings to a Redis list, which the bench reads.

The Celery settings mirror config/celery.py (JSON, acks_late, one message at a time,
queue order, task events), so the comparison isolates Celeriac's code, not a
different delivery contract. Environment: ``BENCH_BARE_BROKER_URL`` and
``BENCH_BARE_SIMULATOR_URL``, read here because this module is an entry point.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import threading
import time
from typing import Any

import anthropic
import redis
from celery import Celery

LLM_TASK = "bench.bare.llm"
TOOL_TASK = "bench.bare.tool"
DONE_KEY = "bench:bare:done"  # a list of JSON records, one per finished chain
SIMULATED_KEY = "simulated"


def bare_config(broker_url: str) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": "default",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "broker_transport_options": {
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
        },
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
    }


BROKER_URL = os.environ.get("BENCH_BARE_BROKER_URL", "redis://127.0.0.1:6379/1")
SIMULATOR_URL = os.environ.get("BENCH_BARE_SIMULATOR_URL", "http://127.0.0.1:8765")

app = Celery("bench-bare")
app.conf.update(bare_config(BROKER_URL))

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def _sdk() -> anthropic.Anthropic:
    with _lock:
        if "sdk" not in _clients:
            # As Celeriac's provider: SDK retries off, the same timeout.
            _clients["sdk"] = anthropic.Anthropic(
                api_key=SIMULATED_KEY, base_url=SIMULATOR_URL, max_retries=0, timeout=60.0
            )
        client: anthropic.Anthropic = _clients["sdk"]
        return client


def _redis() -> redis.Redis:
    with _lock:
        if "redis" not in _clients:
            _clients["redis"] = redis.Redis.from_url(BROKER_URL)
        client: redis.Redis = _clients["redis"]
        return client


def _send(task: str, chain: dict[str, Any]) -> None:
    app.send_task(task, args=[chain], queue=chain["queue"], routing_key=chain["queue"])


@app.task(name=LLM_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def llm(chain: dict[str, Any]) -> None:
    started = time.time()
    clock = time.perf_counter()
    message = _sdk().messages.create(
        **chain["request"],
        messages=chain["messages"],
        extra_headers={"x-celeriac-step": f"{chain['id']}-{len(chain['timings'])}",
                       **chain["headers"]},
    )
    latency_ms = (time.perf_counter() - clock) * 1000
    chain["timings"].append(["llm", started, time.time(), latency_ms])
    content = [_block(block) for block in message.content]
    chain["messages"].append({"role": "assistant", "content": content})
    chain["llm_left"] -= 1
    if chain["llm_left"] > 0 and any(b["type"] == "tool_use" for b in content):
        _send(TOOL_TASK, chain)
    else:
        record = {"id": chain["id"], "submitted": chain["submitted"], "timings": chain["timings"]}
        _redis().rpush(DONE_KEY, json.dumps(record))


@app.task(name=TOOL_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def tool(chain: dict[str, Any]) -> None:
    """All tool calls of the turn (one, with the bench's input) in one task."""
    started = time.time()
    clock = time.perf_counter()
    calls = [b for b in chain["messages"][-1]["content"] if b["type"] == "tool_use"]
    results = [
        {"type": "tool_result", "tool_use_id": call["id"],
         "content": calculate(str(call["input"].get("expression", "")))}
        for call in calls
    ]
    latency_ms = (time.perf_counter() - clock) * 1000
    chain["timings"].append(["tool", started, time.time(), latency_ms])
    chain["messages"].append({"role": "user", "content": results})
    _send(LLM_TASK, chain)


def _block(block: Any) -> dict[str, Any]:
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return {"type": "text", "text": getattr(block, "text", "")}


_OPS: dict[type[ast.AST], Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def calculate(expression: str) -> str:
    """+ - * / on numbers, nothing else: enough for the simulator's expressions."""
    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.operand))
        raise ValueError("unsupported expression")

    try:
        return str(walk(ast.parse(expression, mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError) as exc:
        return f"error: {exc}"
