"""A real Prometheus server scrapes the exporter: PromQL sees exactly the tasks that
finished, whatever the number of workers, and an exporter restart neither loses nor
doubles anything (the counts live in Redis, not in the exporter)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from celeriac.store import Run
from tests.conftest import Stack
from tests.support.debian import require_binary
from tests.support.runs import submit, wait_terminal
from tests.support.services import PROJECT_DIR, free_port, worker_env
from tests.support.waiting import wait_for


class Exporter:
    def __init__(self, env: dict[str, str], port: int, log: Path):
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.exporter", "--port", str(self.port)],
                cwd=PROJECT_DIR, env=worker_env(self.env), stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for(self._serving, timeout=30, interval=0.1, what="the exporter")

    def _serving(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def scraped(stack: Stack, tmp_path: Path) -> Iterator[tuple[Exporter, str]]:
    prometheus = require_binary("prometheus", "prometheus")
    exporter = Exporter(stack.env, free_port(), tmp_path / "exporter.log")
    exporter.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: celeriac\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=60, interval=0.2, what="prometheus")
        yield exporter, url
    finally:
        server.terminate()
        server.wait(20)
        exporter.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).is_success
    except httpx.HTTPError:
        return False


def _query(url: str, promql: str) -> float | None:
    body: dict[str, Any] = httpx.get(f"{url}/api/v1/query", params={"query": promql}).json()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _finished(stack: Stack, status: str | None = None) -> int:
    db = stack.app.extensions["celeriac"].services.db
    with db.reader() as s:
        query = select(func.count()).select_from(Run).where(
            Run.status.in_(("completed", "failed", "cancelled")))
        if status is not None:
            query = query.where(Run.status == status)
        return int(s.scalar(query) or 0)


def test_promql_counts_equal_the_store_across_an_exporter_restart(
    stack: Stack, scraped: tuple[Exporter, str]
) -> None:
    exporter, url = scraped
    ids = [submit(stack.client, {"input": f"What is {i} + {i}?"}) for i in range(6)]
    ids.append(submit(stack.client, {"input": "Hi", "metadata": {"simulator": {"fault": "400"}}}))
    for task_id in ids:
        wait_terminal(stack.client, task_id)
    expected = _finished(stack)
    assert expected >= len(ids)
    wait_for(lambda: _query(url, "sum(agent_requests_total)") == expected, timeout=30,
             interval=0.5, what=f"sum(agent_requests_total) == {expected}")
    assert _query(url, 'sum(agent_requests_total{status="failed"})') == _finished(stack, "failed")
    assert _query(url, "sum(agent_latency_seconds_count)") == expected
    assert (_query(url, 'sum(agent_tool_calls_total{tool_name="calculator"})') or 0) >= 6

    exporter.stop()
    wait_for(lambda: _query(url, 'up{job="celeriac"}') == 0, timeout=30, interval=0.5,
             what="prometheus to see the exporter down")
    exporter.start()
    wait_for(lambda: _query(url, 'up{job="celeriac"}') == 1, timeout=30, interval=0.5,
             what="prometheus to see the exporter back")
    assert _query(url, "sum(agent_requests_total)") == expected  # not lost, not doubled
    assert _query(url, "sum(resets(agent_requests_total[5m]))") == 0
