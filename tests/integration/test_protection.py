"""Outside dev mode the exporter's /metrics and Flower (its /metrics included) are
protected, and neither starts without its credentials: each started for real, as the
Procfile runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import REDIS_DB, stack_env
from tests.support.services import PROJECT_DIR, RedisServer, free_port, worker_env
from tests.support.waiting import wait_for

TOKEN = "metrics-token-5b1e0c"
FLOWER_LOGIN = ("ops", "flower-pw-93d1")
# Never inherited from the shell running the tests: each test says what it sets.
CREDENTIALS = ("CELERIAC_METRICS_TOKEN", "FLOWER_BASIC_AUTH")


@pytest.fixture
def prod_env(redis_server: RedisServer, simulator: Any,
             tmp_path: Path) -> Iterator[dict[str, str]]:
    redis_url = redis_server.url(REDIS_DB["scratch"])
    env = worker_env(stack_env(redis_url, f"sqlite:///{tmp_path / 'store.db'}",
                               simulator.url))
    for name in CREDENTIALS:
        env.pop(name, None)
    env["CELERIAC_DEV_MODE"] = "0"
    yield env
    redis.Redis.from_url(redis_url).flushdb()  # Flower's broadcasts, nothing else


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=PROJECT_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _serving(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return False
    return True


def _exits(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          timeout=120)


def exporter_command(port: int) -> list[str]:
    return [sys.executable, "-m", "app.exporter", "--host", "127.0.0.1", "--port", str(port)]


def test_exporter_requires_the_bearer_token(prod_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "exporter.log"
    process = _start(exporter_command(port), {**prod_env, "CELERIAC_METRICS_TOKEN": TOKEN}, log)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _serving(url, process, log), timeout=60, interval=0.2,
                 what="the exporter to serve")
        bare = httpx.get(url, timeout=10)
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"].startswith("Bearer")
        assert "agent_" not in bare.text
        for wrong in (f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}"):
            assert httpx.get(url, headers={"Authorization": wrong}, timeout=10).status_code == 401
        good = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert good.status_code == 200
        assert "active_agents" in good.text  # real metrics, read from the store and Redis
    finally:
        _stop(process)


@pytest.mark.parametrize("token", [None, ""])
def test_exporter_refuses_to_start_without_a_token(
    prod_env: dict[str, str], token: str | None
) -> None:
    env = dict(prod_env) if token is None else {**prod_env, "CELERIAC_METRICS_TOKEN": token}
    result = _exits(exporter_command(free_port()), env)
    assert result.returncode != 0
    assert "CELERIAC_METRICS_TOKEN" in result.stderr
    assert "serving" not in result.stdout


# Every spelling of "off" the Settings object reads as production.
@pytest.mark.parametrize("dev_mode", ["0", "off", "false", "no", "OFF"])
def test_flowerconfig_refuses_outside_dev_mode_without_basic_auth(
    prod_env: dict[str, str], dev_mode: str,
) -> None:
    prod_env = {**prod_env, "CELERIAC_DEV_MODE": dev_mode}
    # Imported the way Flower executes it (its --conf file).
    load = [sys.executable, "-c", "import runpy; runpy.run_path('config/flowerconfig.py')"]
    refused = _exits(load, prod_env)
    assert refused.returncode != 0
    assert "FLOWER_BASIC_AUTH" in refused.stderr
    assert _exits(load, {**prod_env, "FLOWER_BASIC_AUTH": ""}).returncode != 0
    # The control: with basic auth, or in dev mode, the same file loads.
    assert _exits(load, {**prod_env, "FLOWER_BASIC_AUTH": "u:p"}).returncode == 0
    assert _exits(load, {**prod_env, "CELERIAC_DEV_MODE": "1"}).returncode == 0


def flower_command() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", "flower",
            "--conf=config/flowerconfig.py"]


@pytest.mark.parametrize("dev_mode", ["0", "off"])
def test_flower_refuses_to_start_without_basic_auth(prod_env: dict[str, str],
                                                    dev_mode: str) -> None:
    env = {**prod_env, "CELERIAC_DEV_MODE": dev_mode, "CELERIAC_FLOWER_PORT": str(free_port())}
    result = _exits(flower_command(), env)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stdout + result.stderr


@contextmanager
def _flower(env: dict[str, str], log: Path) -> Iterator[str]:
    """Flower started as the Procfile starts it; yields its base URL."""
    port = free_port()
    process = _start(flower_command(), {**env, "CELERIAC_FLOWER_PORT": str(port)}, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _serving(f"{base}/healthcheck", process, log), timeout=90,
                 interval=0.3, what="Flower to serve")
        yield base
    finally:
        _stop(process)


def test_flower_asks_for_its_login(prod_env: dict[str, str], tmp_path: Path) -> None:
    env = {**prod_env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)}
    with _flower(env, tmp_path / "flower.log") as base:
        for path in ("/", "/workers", "/api/workers", "/metrics"):
            assert httpx.get(base + path, timeout=10).status_code == 401, path
            wrong = httpx.get(base + path, auth=(FLOWER_LOGIN[0], "nope"), timeout=10)
            assert wrong.status_code == 401, path
        assert httpx.get(base + "/", auth=FLOWER_LOGIN, timeout=10).status_code == 200
        # No CELERIAC_METRICS_TOKEN here: no bearer token opens /metrics, not even empty.
        for header in ("Bearer", "Bearer None", f"Bearer {TOKEN}"):
            denied = httpx.get(base + "/metrics", headers={"Authorization": header},
                               timeout=10)
            assert denied.status_code == 401, header


def test_flower_metrics_take_the_metrics_token_or_the_login(
    prod_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**prod_env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN),
           "CELERIAC_METRICS_TOKEN": TOKEN}
    with _flower(env, tmp_path / "flower.log") as base:
        url = base + "/metrics"
        bare = httpx.get(url, timeout=10)
        assert bare.status_code == 401
        assert "flower_" not in bare.text
        for wrong in (f"Bearer {TOKEN}x", TOKEN, f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                      f"bearer {TOKEN}"):
            denied = httpx.get(url, headers={"Authorization": wrong}, timeout=10)
            assert denied.status_code == 401, wrong
            assert "flower_" not in denied.text, wrong
        assert httpx.get(url, auth=(FLOWER_LOGIN[0], "nope"), timeout=10).status_code == 401

        by_token = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert by_token.status_code == 200
        assert "flower_events_total" in by_token.text  # Flower's real metrics
        by_login = httpx.get(url, auth=FLOWER_LOGIN, timeout=10)
        assert by_login.status_code == 200
        assert "flower_events_total" in by_login.text

        # The token opens /metrics only, not the UI or the API.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/", "/api/workers"):
            assert httpx.get(base + path, headers=bearer, timeout=10).status_code == 401, path
        # Probes carry no credentials.
        health = httpx.get(base + "/healthcheck", timeout=10)
        assert (health.status_code, health.text) == (200, "OK")
