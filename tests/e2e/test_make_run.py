"""README's first promise: ``make run`` starts the whole system, even on a machine
without Redis (embedded Redis) or a database (SQLite), the printed curl completes
"What is 17 * 23?" with 391, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.services import PROJECT_DIR, free_port
from tests.support.waiting import wait_for


@pytest.fixture
def system(tmp_path: Path):  # type: ignore[no-untyped-def]
    ports = {name: free_port() for name in ("web", "flower", "exporter", "simulator", "redis")}
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for name in ("REDIS_URL", "DATABASE_URL", "BROKER_URL", "CELERIAC_SIMULATOR_URL"):
        env.pop(name, None)
    env.update(
        CELERIAC_EMBEDDED_REDIS="1",
        CELERIAC_VAR_DIR=str(tmp_path / "var"),
        CELERIAC_EMBEDDED_REDIS_PORT=str(ports["redis"]),
        CELERIAC_WEB_PORT=str(ports["web"]),
        CELERIAC_FLOWER_PORT=str(ports["flower"]),
        CELERIAC_EXPORTER_PORT=str(ports["exporter"]),
        CELERIAC_SIMULATOR_PORT=str(ports["simulator"]),
        DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
        CELERIAC_WORKER_CONCURRENCY="4",
    )
    output: list[str] = []
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's
    )

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield process, ports, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_make_run_serves_the_demo_and_stops_cleanly(system) -> None:  # type: ignore[no-untyped-def]
    process, ports, output = system
    wait_for(lambda: any("Celeriac is up" in line for line in output), timeout=120,
             interval=0.2, what="the ready banner")
    text = "".join(output)
    curl = next(line for line in text.splitlines() if "curl -s -X POST" in line)
    assert f"127.0.0.1:{ports['web']}/agent/run" in curl
    body = re.search(r"-d '(.*)'", curl)
    assert body is not None
    web = f"http://127.0.0.1:{ports['web']}"
    response = httpx.post(f"{web}/agent/run", content=body.group(1),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 202
    status_url = web + response.json()["status_url"]

    def finished() -> dict[str, object] | None:
        doc: dict[str, object] = httpx.get(status_url).json()
        return doc if doc["status"] in ("completed", "failed") else None

    doc = wait_for(finished, timeout=60, interval=0.2, what="the demo task")
    assert doc["status"] == "completed" and "391" in str(doc["result"])
    # The worker counts the run just after recording it: wait for the count.
    wait_for(
        lambda: 'agent_requests_total{intent="default",status="completed"} 1.0'
        in httpx.get(f"http://127.0.0.1:{ports['exporter']}/metrics").text,
        timeout=30, interval=0.2, what="the completed run in the exporter's metrics",
    )
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{ports['flower']}/").status_code == 200,
             timeout=60, interval=0.5, what="flower")
    assert "simulated (no API key set)" in text

    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 6  # honcho, web, worker, beat, flower, exporter, simulator
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    process.wait(60)
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
