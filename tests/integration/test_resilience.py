"""Provider resilience on two real worker processes against the simulated provider
injecting faults: the global rate limit, retries, retry-after, fallbacks both ways,
the circuit breaker, permanent errors."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from celeriac import keys
from celeriac.limits.config import Limits
from celeriac.limits.ratelimit import RateLimiter
from celeriac.simulator import start_in_thread
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for

RESILIENCE_DB = 15
LIMITED_MODEL = "claude-sonnet-4-20250514"
LIMIT_RPM = 240
LIMITS = {
    LIMITED_MODEL: {"rpm": LIMIT_RPM},
    # The default 4 attempts per model (so 30% faults cannot exhaust a chain), with
    # short backoffs to keep the test quick.
    "retries": {"attempts_per_model": 4, "backoff_base_s": 0.2, "backoff_cap_s": 2},
}


class Resilient:
    def __init__(self, app: Flask, workers: list[WorkerProcess], simulator: Any,
                 client: redis.Redis):
        self.app, self.workers, self.simulator, self.redis = app, workers, simulator, client
        self.client = app.test_client()

    def calls(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self.simulator.log() if (e.get("step") or "").startswith(run_id)]


@pytest.fixture(scope="module")
def resilient(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Resilient]:
    # Its own simulator, enforcing the same limit: it answers 429 past it.
    simulator = start_in_thread(rpm=LIMIT_RPM)
    redis_url = redis_server.url(RESILIENCE_DB)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    tmp = tmp_path_factory.mktemp("resilience")
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env["CELERIAC_LIMITS"] = json.dumps(LIMITS)
    app = create_app(settings_from(env), configure_logs=False)
    celery = app.extensions["celeriac"].queue.celery
    workers = [start_worker(env, tmp, ping=celery, concurrency=8) for _ in range(2)]
    yield Resilient(app, workers, simulator, client)
    for worker in workers:
        worker.stop()
    simulator.stop()
    client.flushdb()


@pytest.fixture(autouse=True)
def _fresh_provider_state(resilient: Resilient) -> None:
    """Each test starts with closed circuits, no pauses or slowdowns, an empty
    provider log."""
    for pattern in ("breaker", "pause", "slow", "ratelimit"):
        stale = list(resilient.redis.scan_iter(f"{keys.PREFIX}:{pattern}:*"))
        if stale:
            resilient.redis.delete(*stale)
    resilient.simulator.reset()


def test_limiter_holds_across_two_worker_processes(resilient: Resilient,
                                                   tmp_path: Path) -> None:
    ids = [submit(resilient.client, {"input": f"Hello {i}"}) for i in range(40)]
    docs = [wait_terminal(resilient.client, task_id, timeout=60) for task_id in ids]
    assert [d["status"] for d in docs] == ["completed"] * 40
    calls = sorted(
        (e for e in resilient.simulator.log() if e["model"] == LIMITED_MODEL),
        key=lambda e: e["ts"],
    )
    assert len(calls) == 40
    assert [e["status"] for e in calls] == [200] * 40  # not one provider 429
    times = [e["ts"] for e in calls]
    # Paced at 233 / 60 = 3.88 calls per second (240 less the burst and the jitter
    # allowance) after a burst of 3: the 40 calls must take about 9.5 s at the
    # provider (unpaced, they would arrive at once), and not much more (the pace is
    # used). Arrival order carries scheduling jitter on a loaded machine, so the bounds
    # allow 1.5 s either way; the provider's own rolling window (0 429s above) is the
    # contract.
    pace = RateLimiter(resilient.redis, Limits()).pace_rpm(LIMIT_RPM)
    assert pace == 233
    paced = (40 - 3) / (pace / 60)
    span = times[-1] - times[0]
    assert paced - 1.5 < span < paced + 2.0, span
    # Both worker processes took part.
    executed = [w.log().count('"llm_call"') for w in resilient.workers]
    assert all(n > 0 for n in executed), executed


def test_every_task_completes_under_30_percent_transient_faults(resilient: Resilient) -> None:
    body = {"input": "What is 17 * 23?", "agent": "openai",
            "metadata": {"simulator": {"fault_rate": 0.3, "retry_after": 0}}}
    ids = [submit(resilient.client, body) for _ in range(20)]
    docs = [wait_terminal(resilient.client, task_id, timeout=120) for task_id in ids]
    assert [d["status"] for d in docs] == ["completed"] * 20
    assert all("391" in d["result"] for d in docs)
    log = [e for task_id in ids for e in resilient.calls(task_id)]
    failed = [e for e in log if e["status"] != 200]
    assert failed, "no fault was injected: the test proves nothing"
    # Every attempt, failed or not, is recorded on its step.
    recorded = sum(
        len([a for a in s["attempt_log"] if not a["ok"]])
        for d in docs for s in d["steps"] if s["kind"] == "llm"
    )
    assert recorded == len(failed)


def test_retry_after_is_honoured_then_the_chain_falls_back(resilient: Resilient) -> None:
    faults = {"models": {LIMITED_MODEL: {"fault": "429", "retry_after": "2"}}}
    task_id = submit(resilient.client, {"input": "Hi", "metadata": {"simulator": faults}})
    doc = wait_terminal(resilient.client, task_id, timeout=60)
    assert doc["status"] == "completed", doc
    step = doc["steps"][0]
    assert step["model"] == "claude-haiku-4-20250514"
    assert step["fallback_reason"] == "retries_exhausted"
    assert [(a["model"], a["ok"]) for a in step["attempt_log"]] == [
        *[(LIMITED_MODEL, False)] * 4, ("claude-haiku-4-20250514", True)
    ]
    attempts = [e["ts"] for e in resilient.calls(task_id) if e["model"] == LIMITED_MODEL]
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 1.9 for gap in gaps), gaps  # retry-after 2 s beats 0.2-0.8 s backoff


def test_a_429_slows_the_model_for_every_worker_instead_of_stopping_it(
    resilient: Resilient,
) -> None:
    # One task's calls are refused with retry-after 5 s (below pause_after_s, 10 s).
    faults = {"models": {LIMITED_MODEL: {"fault": "429", "retry_after": "5"}}}
    refused = submit(resilient.client, {"input": "Hi", "metadata": {"simulator": faults}})
    first_429 = wait_for(
        lambda: next((e for e in resilient.calls(refused) if e["status"] == 429), None),
        timeout=30, what="the first 429",
    )
    ids = [submit(resilient.client, {"input": f"Hello {i}"}) for i in range(3)]
    docs = [wait_terminal(resilient.client, task_id, timeout=60) for task_id in ids]
    assert [d["status"] for d in docs] == ["completed"] * 3
    others = [e for task_id in ids for e in resilient.calls(task_id)
              if e["model"] == LIMITED_MODEL]
    assert others and all(e["status"] == 200 for e in others)
    # Not stopped: a pause for everyone would have held these calls until 5 s after
    # the 429; they went out at once, on the same model...
    assert min(e["ts"] for e in others) < first_429["ts"] + 4, (first_429, others)
    # ...at a slower pace, which every worker (and the API) sees.
    view = next(m for m in resilient.client.get("/agent/providers").get_json()["models"]
                if m["model"] == LIMITED_MODEL)
    assert view["paused_for_s"] == 0
    assert 0.5 <= view["pace_factor"] < 1.0  # x0.9 per cut, one cut per 5 s
    wait_terminal(resilient.client, refused, timeout=60)


@pytest.mark.parametrize(
    ("agent", "served_first", "fallback"),
    [("default", LIMITED_MODEL, "claude-haiku-4-20250514"),
     ("default", LIMITED_MODEL, "gpt-4o-mini"),
     ("openai", "gpt-4o-mini", "claude-haiku-4-20250514")],
    ids=["anthropic-to-anthropic", "anthropic-to-openai", "openai-to-anthropic"],
)
def test_fallback_mid_conversation_keeps_the_tool_history(
    resilient: Resilient, agent: str, served_first: str, fallback: str
) -> None:
    # Turn 1 (after the tool call) fails on every model ahead of `fallback`.
    chain = {"default": [LIMITED_MODEL, "claude-haiku-4-20250514", "gpt-4o-mini"],
             "openai": ["gpt-4o-mini", "claude-haiku-4-20250514"]}[agent]
    failing = chain[: chain.index(fallback)]
    faults = {"turns": {"1": {"models": {m: {"fault": "529"} for m in failing}}}}
    task_id = submit(resilient.client, {"input": "What is 17 * 23?", "agent": agent,
                                        "metadata": {"simulator": faults}})
    doc = wait_terminal(resilient.client, task_id, timeout=60)
    assert doc["status"] == "completed", doc
    llm = [s for s in doc["steps"] if s["kind"] == "llm"]
    assert llm[0]["model"] == served_first
    assert llm[1]["model"] == fallback
    assert llm[1]["fallback_reason"] == "retries_exhausted"
    assert "391" in doc["result"]  # the fallback model saw the tool call and its result


def test_open_circuit_goes_to_the_fallback_at_once(resilient: Resilient) -> None:
    breaker = resilient.app.extensions["celeriac"].services.breaker
    for _ in range(5):
        breaker.record("gpt-4o-mini", ok=False)
    assert breaker.view("gpt-4o-mini").state == "open"
    providers = resilient.client.get("/agent/providers").get_json()["models"]
    assert {m["model"]: m["circuit"]["state"] for m in providers}["gpt-4o-mini"] == "open"
    task_id = submit(resilient.client, {"input": "Hello", "agent": "openai"})
    doc = wait_terminal(resilient.client, task_id, timeout=30)
    assert doc["status"] == "completed"
    step = doc["steps"][0]
    assert step["model"] == "claude-haiku-4-20250514"
    assert step["fallback_reason"] == "circuit_open"
    assert [a["model"] for a in step["attempt_log"]] == ["claude-haiku-4-20250514"]
    assert all(e["model"] != "gpt-4o-mini" for e in resilient.calls(task_id))


def test_consecutive_failures_open_the_circuit(resilient: Resilient) -> None:
    faults = {"models": {"gpt-4o-mini": {"fault": "500"}}}
    ids = [submit(resilient.client, {"input": f"Hi {i}", "agent": "openai",
                                     "metadata": {"simulator": faults}}) for i in range(3)]
    docs = [wait_terminal(resilient.client, task_id, timeout=60) for task_id in ids]
    assert all(d["status"] == "completed" for d in docs)
    breaker = resilient.app.extensions["celeriac"].services.breaker
    assert breaker.view("gpt-4o-mini").state == "open"
    # Once open, later tasks skip the failing model without trying it.
    task_id = submit(resilient.client, {"input": "After", "agent": "openai",
                                        "metadata": {"simulator": faults}})
    doc = wait_terminal(resilient.client, task_id, timeout=30)
    assert doc["steps"][0]["fallback_reason"] == "circuit_open"
    assert resilient.calls(task_id) and all(
        e["model"] != "gpt-4o-mini" for e in resilient.calls(task_id)
    )


def test_permanent_errors_fail_fast_with_a_stable_code(resilient: Resilient) -> None:
    task_id = submit(resilient.client, {"input": "Hi",
                                        "metadata": {"simulator": {"fault": "400"}}})
    doc = wait_terminal(resilient.client, task_id, timeout=30)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "provider_bad_request"
    assert len(resilient.calls(task_id)) == 1  # no retry, no fallback
