"""Provider resilience on two real worker processes against the simulated provider
injecting faults: the global rate limit, retries, retry-after, fallbacks both ways
(after retries, an open circuit, a rate-limit wait past its bound), the circuit
breaker, transient errors (502, 504, a hang-up, the SDK's own timeout), permanent
errors, the response cache."""

from __future__ import annotations

import itertools
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from celeriac import redis_keys as keys
from celeriac.observability.metrics import CACHE_HITS, RedisCollector
from simulator import start_in_thread
from tests.conftest import settings_from, stack_env
from tests.support.config import config_with_agents
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for

RESILIENCE_DB = 15
LIMITED_MODEL = "claude-sonnet-4-20250514"
LIMIT_RPM = 240
# The primary of the "scarce" agent: one request a minute, so once its burst is spent
# the limiter's wait (about 60 s) is past fallback_after_wait_s (20 s).
SCARCE_MODEL = "gpt-4o"
LIMITS = {
    LIMITED_MODEL: {"rpm": LIMIT_RPM},
    SCARCE_MODEL: {"rpm": 1},
    # The default 4 attempts per model (so 30% faults cannot exhaust a chain), with
    # short backoffs to keep the test quick.
    "retries": {"attempts_per_model": 4, "backoff_base_s": 0.2, "backoff_cap_s": 2},
}
# The SDKs' own request timeout on these workers: short, so the slow-provider test
# sees real client timeouts quickly (no other test here waits on the provider).
PROVIDER_TIMEOUT_S = 1.5
CACHED_MODEL = "claude-haiku-4-20250514"
EXTRA_AGENTS = f'''
[agents.cached]
description = "Opts in to the response cache."

[[agents.cached.versions]]
version = "1"
model = "{CACHED_MODEL}"
cache_ttl_s = 300
system_prompt = "Answer concisely."

[agents.scarce]
description = "A primary with almost no rate-limit capacity, then a fallback."

[[agents.scarce.versions]]
version = "1"
model = "{SCARCE_MODEL}"
fallbacks = ["claude-haiku-4-20250514"]
system_prompt = "Answer concisely."
'''


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
    env["CELERIAC_CONFIG_DIR"] = str(config_with_agents(tmp / "config", EXTRA_AGENTS))
    env["CELERIAC_LIMITS"] = json.dumps(LIMITS)
    env["CELERIAC_PROVIDER_TIMEOUT_S"] = str(PROVIDER_TIMEOUT_S)
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


def most_in_window(times: list[float], width_s: float) -> int:
    """The most arrivals in any rolling window ``width_s`` long (times sorted)."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= width_s:
            first += 1
        most = max(most, last - first + 1)
    return most


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
    # 40 calls are far below the provider's 240 a minute, so its 429s cannot catch a
    # broken limiter here; the pace can. GCRA grants the burst + 1 at once, then one
    # call every 60 / pace s, and a call reaches the provider at most jitter_s after
    # its slot: so any window of WINDOW_S holds at most the slots of WINDOW_S +
    # jitter_s, plus the burst + 1. 233 RPM: 25 in 5 s. Unpaced, or paced per process
    # (celery#5732: twice the rate with two workers), the 40 calls arrive within a
    # few seconds and break that.
    services = resilient.app.extensions["celeriac"].services
    limits = services.limits
    pace = services.limiter.pace_rpm(LIMIT_RPM)
    assert pace == 233  # 240 less the burst + 1 and 0.8 s of jitter allowance
    window_s = 5.0
    allowed = math.floor((window_s + limits.jitter_s) * pace / 60) + limits.burst + 1
    assert allowed < 40  # else the check below could not fail
    assert most_in_window(times, window_s) <= allowed, times
    # The pace is used, not undershot: the 40 calls take about (40 - 3) / (233 / 60)
    # = 9.5 s at the provider. Arrival order carries scheduling jitter on a loaded
    # machine, so the bounds allow 1.5 s under and 2 s over.
    paced = (40 - limits.burst - 1) / (pace / 60)
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


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("502", 502, "provider_unavailable"),
     ("504", 504, "provider_unavailable"),
     # The simulator holds the request, then hangs up without an answer.
     ("timeout", None, "provider_connection_error")],
    ids=["502", "504", "hang-up"],
)
def test_transient_errors_are_retried_then_the_chain_serves(
    resilient: Resilient, fault: str, status: int | None, code: str
) -> None:
    faults = {"models": {LIMITED_MODEL: {"fault": fault, "timeout_s": "0.3"}}}
    task_id = submit(resilient.client, {"input": "Hi", "metadata": {"simulator": faults}})
    doc = wait_terminal(resilient.client, task_id, timeout=60)
    assert doc["status"] == "completed", doc
    step = doc["steps"][0]
    assert step["model"] == "claude-haiku-4-20250514"
    assert step["fallback_reason"] == "retries_exhausted"
    failed = [(a["model"], a["status"], a["code"]) for a in step["attempt_log"] if not a["ok"]]
    assert failed == [(LIMITED_MODEL, status, code)] * 4  # every attempt per model
    assert [a["model"] for a in step["attempt_log"] if a["ok"]] == ["claude-haiku-4-20250514"]
    # A hung-up request is logged when the simulator hangs up, after the task moved on.
    wait_for(lambda: len([e for e in resilient.calls(task_id)
                          if e["model"] == LIMITED_MODEL]) >= 4,
             timeout=10, what="the four failed attempts in the provider's log")
    assert [e["status"] for e in resilient.calls(task_id) if e["model"] == LIMITED_MODEL] \
        == [None if fault == "timeout" else status] * 4


def test_a_provider_slower_than_the_client_timeout_is_retried_then_falls_back(
    resilient: Resilient,
) -> None:
    # The primary answers, but only after PROVIDER_TIMEOUT_S: the SDK gives up on
    # each attempt (its own timeout, not a hang-up), and the chain serves.
    slow_ms = int(PROVIDER_TIMEOUT_S * 1000 * 3)
    faults = {"models": {LIMITED_MODEL: {"latency_ms": slow_ms}}}
    task_id = submit(resilient.client, {"input": "Hi", "metadata": {"simulator": faults}})
    doc = wait_terminal(resilient.client, task_id, timeout=90)
    assert doc["status"] == "completed", doc
    step = doc["steps"][0]
    assert (step["model"], step["fallback_reason"]) == ("claude-haiku-4-20250514",
                                                         "retries_exhausted")
    failed = [(a["model"], a["status"], a["code"]) for a in step["attempt_log"] if not a["ok"]]
    assert failed == [(LIMITED_MODEL, None, "provider_timeout")] * 4
    # Each attempt gave up at the client's timeout, long before the provider answered.
    assert all(a["latency_ms"] < slow_ms for a in step["attempt_log"] if not a["ok"]), \
        step["attempt_log"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [("400", "provider_bad_request"), ("401", "provider_auth_failed"),
     ("403", "provider_forbidden"), ("404", "provider_model_not_found")],
)
def test_permanent_errors_fail_fast_with_a_stable_code(
    resilient: Resilient, fault: str, code: str
) -> None:
    task_id = submit(resilient.client, {"input": "Hi",
                                        "metadata": {"simulator": {"fault": fault}}})
    doc = wait_terminal(resilient.client, task_id, timeout=30)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == code
    # One call: no retry, no fallback.
    assert [e["status"] for e in resilient.calls(task_id)] == [int(fault)]
    assert [(a["model"], a["code"]) for a in doc["steps"][0]["attempt_log"]] == [
        (LIMITED_MODEL, code)
    ]


def test_a_rate_limit_wait_past_the_bound_falls_back(resilient: Resilient) -> None:
    # Spend the scarce model's burst through the same limiter the workers use, as
    # other workers' calls would: its next slot is then about a minute away.
    services = resilient.app.extensions["celeriac"].services
    limiter, limits = services.limiter, services.limits
    grants = [limiter.acquire(SCARCE_MODEL, 0, max_wait_s=0) for _ in range(limits.burst + 2)]
    assert [g.granted for g in grants] == [True] * (limits.burst + 1) + [False]
    assert grants[-1].wait_s > limits.fallback_after_wait_s
    task_id = submit(resilient.client, {"input": "Hello", "agent": "scarce"})
    doc = wait_terminal(resilient.client, task_id, timeout=30)
    assert doc["status"] == "completed", doc
    step = doc["steps"][0]
    assert step["model"] == "claude-haiku-4-20250514"
    assert step["fallback_reason"] == "rate_limited"
    assert [a["model"] for a in step["attempt_log"]] == ["claude-haiku-4-20250514"]
    assert resilient.calls(task_id)
    assert all(e["model"] != SCARCE_MODEL for e in resilient.calls(task_id))


def cache_hits(client: redis.Redis, model: str) -> float:
    """agent_cache_hits_total{model=...}, read the way the exporter reads it."""
    for metric in RedisCollector(client).collect():
        if metric.name == CACHE_HITS.name.removesuffix("_total"):
            return sum(s.value for s in metric.samples
                       if s.name == CACHE_HITS.name and s.labels["model"] == model)
    raise AssertionError(f"{CACHE_HITS.name} is not collected")


def test_an_identical_request_is_served_from_the_cache(resilient: Resilient) -> None:
    hits_before = cache_hits(resilient.redis, CACHED_MODEL)
    body = {"input": f"Hello {uuid.uuid4().hex}", "agent": "cached"}
    first = wait_terminal(resilient.client, submit(resilient.client, body), timeout=30)
    second = wait_terminal(resilient.client, submit(resilient.client, body), timeout=30)
    assert [first["status"], second["status"]] == ["completed"] * 2
    assert second["result"] == first["result"]
    # One provider call for the two runs.
    assert len(resilient.calls(first["task_id"])) == 1
    assert resilient.calls(second["task_id"]) == []
    paid, hit = first["steps"][0], second["steps"][0]
    assert (paid["cached"], hit["cached"]) == (False, True)
    assert paid["cost_usd"] > 0
    assert hit["cost_usd"] == 0 and second["usage"]["cost_usd"] == 0
    assert hit["model"] == CACHED_MODEL
    # Counted once (the metric is written just after the run is recorded as ended).
    wait_for(lambda: cache_hits(resilient.redis, CACHED_MODEL) >= hits_before + 1,
             timeout=10, what="the cache hit to be counted")
    assert cache_hits(resilient.redis, CACHED_MODEL) == hits_before + 1
