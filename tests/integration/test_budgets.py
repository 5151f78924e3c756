"""Money under concurrency, on two real worker processes and the simulated provider:
caps hold, the provider's own bill equals the ledger, spend survives the loss of the
Redis counters, per-task caps stop agents, downgrades happen, unknown prices fail."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from app import create_app
from celeriac import redis_keys as keys
from celeriac.accounting.budgets import Budgets
from celeriac.accounting.keeper import BudgetKeeper, DaySpend
from celeriac.accounting.pricing import cost_nanos, usd_to_nanos
from celeriac.catalog import load_catalog
from celeriac.gateway.providers.base import Usage
from celeriac.store import LedgerEntry
from config.settings import CONFIG_DIR
from simulator import start_in_thread
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import RedisServer, WorkerProcess, start_worker
from tests.support.waiting import wait_for

BUDGET_DB = 9
DAILY_CAP_USD = 0.25


class Money:
    def __init__(self, app: Flask, workers: list[WorkerProcess], simulator: Any,
                 client: redis.Redis):
        self.app, self.workers, self.simulator, self.redis = app, workers, simulator, client
        self.client = app.test_client()
        self.services = app.extensions["celeriac"].services

    def provider_bill_nanos(self) -> int:
        """What the provider served, priced: the ground truth, from its own log."""
        catalog = load_catalog(CONFIG_DIR)
        total = 0
        for entry in self.simulator.log():
            if entry["status"] == 200 and entry["model"]:
                price = catalog.model(entry["model"]).price
                assert price is not None
                usage = Usage(input_tokens=entry["input_tokens"],
                              output_tokens=entry["output_tokens"])
                total += cost_nanos(price, usage)
        return total

    def ledger_nanos(self) -> int:
        with self.services.db.reader() as s:
            return int(s.scalar(select(func.coalesce(func.sum(LedgerEntry.cost_nanos), 0))))


@pytest.fixture(scope="module")
def money(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Money]:
    simulator = start_in_thread()
    redis_url = redis_server.url(BUDGET_DB)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    tmp = tmp_path_factory.mktemp("money")
    env = stack_env(redis_url, f"sqlite:///{tmp / 'store.db'}", simulator.url)
    env["CELERIAC_BUDGETS"] = json.dumps(
        {"daily_usd": DAILY_CAP_USD, "tenant_daily_usd": DAILY_CAP_USD}
    )
    app = create_app(settings_from(env), configure_logs=False)
    celery = app.extensions["celeriac"].queue.celery
    workers = [start_worker(env, tmp, ping=celery, concurrency=8) for _ in range(2)]
    yield Money(app, workers, simulator, client)
    for worker in workers:
        worker.stop()
    simulator.stop()
    client.flushdb()


def test_per_task_cap_stops_a_long_agent(money: Money) -> None:
    task_id = submit(money.client, {"input": "[loop] forever", "agent": "openai",
                                    "budget_usd": 0.0012})
    doc = wait_terminal(money.client, task_id, timeout=60)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "budget_exceeded"
    assert "task budget exceeded" in doc["error"]["message"]
    assert "cap $0.001200" in doc["error"]["message"]
    assert 0 < doc["usage"]["cost_usd"] <= 0.0012
    assert len([s for s in doc["steps"] if s["kind"] == "llm"]) < 10  # before max_steps


def test_downgrades_to_a_cheaper_model_of_the_chain(money: Money) -> None:
    # Sonnet's worst case (1024 output tokens at $15/M) does not fit $0.01; Haiku's does.
    task_id = submit(money.client, {"input": "What is 17 * 23?", "budget_usd": 0.01})
    doc = wait_terminal(money.client, task_id, timeout=60)
    assert doc["status"] == "completed", doc
    llm = [s for s in doc["steps"] if s["kind"] == "llm"]
    assert {s["model"] for s in llm} == {"claude-haiku-4-20250514"}
    assert llm[0]["fallback_reason"] == "budget"
    assert "391" in doc["result"]


def test_unknown_price_is_refused_before_any_call(money: Money, tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    with (config / "models.toml").open("a") as fh:
        fh.write('\n[models."claude-mystery-1"]\nprovider = "anthropic"\n'
                 "context_window = 100000\nmax_output_tokens = 1000\n")
    env = stack_env(money.services.settings.redis_url, f"sqlite:///{tmp_path / 's.db'}",
                    money.simulator.url)
    env["CELERIAC_CONFIG_DIR"] = str(config)
    app = create_app(settings_from(env), configure_logs=False)
    before = len(money.simulator.log())
    response = app.test_client().post("/agent/run",
                                      json={"input": "hi", "model": "claude-mystery-1"})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "price_unknown"
    assert len(money.simulator.log()) == before


def test_200_concurrent_tasks_never_pass_the_daily_cap(money: Money) -> None:
    """Also: losing the Redis counters mid-run does not reset spend."""
    ids: list[str] = []
    refused_at_the_door = 0
    for i in range(200):
        response = money.client.post("/agent/run", json={"input": f"What is {i} * 3?"})
        if response.status_code == 429:  # the cap filled while we were still submitting
            assert response.get_json()["error"]["code"] == "budget_exhausted"
            refused_at_the_door += 1
        else:
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["task_id"])
        if i == 100:
            # Wait until real money is spent, then lose every budget counter.
            wait_for(lambda: money.ledger_nanos() > usd_to_nanos(0.05), timeout=60,
                     what="some spend before the loss")
            lost = list(money.redis.scan_iter(f"{keys.PREFIX}:budget:*"))
            money.redis.delete(*lost)
    docs = [wait_terminal(money.client, task_id, timeout=180) for task_id in ids]
    statuses = {d["status"] for d in docs}
    assert statuses <= {"completed", "failed"}
    failed = [d for d in docs if d["status"] == "failed"]
    assert failed or refused_at_the_door  # the cap did bind
    assert all(d["error"]["code"] == "budget_exceeded" for d in failed)
    assert any(d["status"] == "completed" for d in docs)
    bill = money.provider_bill_nanos()
    ledger = money.ledger_nanos()
    assert bill <= usd_to_nanos(DAILY_CAP_USD), bill / 1e9
    assert bill == ledger  # to the nano-dollar, so to the micro-dollar
    assert sum(usd_to_nanos(d["usage"]["cost_usd"]) for d in docs) <= ledger
    # The counters were rebuilt from the ledger: they show all of today's spend.
    state = money.services.keeper.day_state(_today(money))
    assert state["spent"] >= ledger
    usage = money.client.get("/agent/usage").get_json()
    assert usd_to_nanos(usage["total_cost_usd"]) == ledger
    assert usage["budgets"]["global"]["cap_usd"] == DAILY_CAP_USD


def _today(money: Money) -> str:
    return money.services.budgets.day(datetime.now(UTC)).isoformat()


def test_new_work_is_refused_with_429_once_the_day_is_spent(money: Money) -> None:
    money.services.keeper.settle("fill-the-day", day=_today(money), tenant="default",
                                 actual_nanos=usd_to_nanos(DAILY_CAP_USD))
    response = money.client.post("/agent/run", json={"input": "one more"})
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "budget_exhausted"
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 24 * 3600


def test_a_burst_of_first_requests_from_a_new_tenant_stays_capped(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url(BUDGET_DB), decode_responses=True)
    keeper = BudgetKeeper(client, Budgets(daily_usd=0, tenant_daily_usd=0.001),
                          lambda day: DaySpend({}, {}))
    granted: list[int] = []
    lock = threading.Lock()

    def first_request(n: int) -> None:
        refusal = keeper.reserve(f"burst-{n}", day="2030-01-01", tenant="brand-new",
                                 amount_nanos=70_000)  # $0.00007 each
        if refusal is None:
            with lock:
                granted.append(70_000)

    threads = [threading.Thread(target=first_request, args=(n,)) for n in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) <= usd_to_nanos(0.001)
    assert len(granted) == 14  # exactly what fits: 14 x 70,000 <= 1,000,000
