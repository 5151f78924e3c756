"""Worker commands against real prefork workers: Celery's own ``--autoscale`` and
``inspect``, and ``celeriac workers`` / ``celeriac scale`` (remote control).

Two workers share a Redis database: ``auto`` runs ``--autoscale=4,1`` on the three
queues, ``fixed`` a one-process pool on a queue nothing is sent to (so every task
goes to ``auto``). Celery refuses pool_grow/pool_shrink on an autoscaling worker,
so resizing is checked on ``fixed``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from app.cli import main as celeriac_main
from tests.conftest import settings_from, stack_env
from tests.support.runs import submit, wait_terminal
from tests.support.services import PROJECT_DIR, RedisServer, WorkerProcess, start_worker, worker_env
from tests.support.waiting import wait_for

COMMANDS_DB = 7
SPARE_QUEUE = "spare"
# How long a command waits for the workers' replies. The 1 s default is too short on a
# loaded machine; naming the workers (-d) returns as soon as all of them answered, so a
# long deadline costs time only for commands sent to every worker.
REPLY_TIMEOUT = ["--timeout", "10"]


@dataclass
class Workers:
    env: dict[str, str]
    app: Flask
    auto: WorkerProcess
    fixed: WorkerProcess


@pytest.fixture(scope="module")
def workers(
    redis_server: RedisServer, simulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    redis_url = redis_server.url(COMMANDS_DB)
    redis.Redis.from_url(redis_url).flushdb()
    tmp = tmp_path_factory.mktemp("worker-commands")
    env = stack_env(redis_url, f"sqlite:///{tmp / 'commands.db'}", simulator.url)
    app = create_app(settings_from(env), configure_logs=False)
    # Both boot at once; --autoscale needs the prefork pool (it grows processes).
    auto = start_worker(env, tmp, pool="prefork", concurrency=1, extra=["--autoscale=4,1"])
    fixed = start_worker(env, tmp, queues=SPARE_QUEUE, pool="prefork", concurrency=1)
    try:
        celery = app.extensions["celeriac"].queue.celery
        for worker in (auto, fixed):
            wait_for(lambda w=worker: _answers(celery, w), timeout=60, interval=0.2,
                     what=f"worker {worker.name}")
        yield Workers(env, app, auto, fixed)
    finally:
        for worker in (auto, fixed):  # warm shutdowns, side by side
            worker.process.terminate()
        auto.stop()
        fixed.stop()
        app.extensions["celeriac"].services.db.dispose()
        redis.Redis.from_url(redis_url).flushdb()


def _answers(celery: Any, worker: WorkerProcess) -> bool:
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited early:\n{worker.log()[-3000:]}")
    return bool(celery.control.ping(destination=[worker.name], timeout=0.5))


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """A command as a user types it, in its own process."""
    return subprocess.run(list(argv), cwd=PROJECT_DIR, env=worker_env(env), capture_output=True,
                          text=True, timeout=60)


def celeriac_cli() -> str:
    script = Path(sys.executable).parent / "celeriac"
    assert script.exists(), "the celeriac console script is not installed"
    return str(script)


def celeriac(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """``celeriac`` in this process (each subprocess costs seconds of imports)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = celeriac_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def listed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           workers: Workers) -> dict[str, Any] | None:
    """``celeriac workers --json`` for both workers, or None if either did not reply in
    time (ask again)."""
    # Naming both workers lets the command return as soon as both answered.
    code, out, err = celeriac(monkeypatch, capsys, workers.env, "workers", "--json",
                              "-d", workers.auto.name, "-d", workers.fixed.name,
                              *REPLY_TIMEOUT)
    if code == 1 and "no workers answered" in err:
        return None
    assert code == 0, err
    found: dict[str, Any] = json.loads(out)
    return found if set(found) == {workers.auto.name, workers.fixed.name} else None


def both_listed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                workers: Workers) -> dict[str, Any]:
    return wait_for(lambda: listed(monkeypatch, capsys, workers), timeout=60, interval=0.2,
                    what="both workers to reply to celeriac workers")


def concurrency(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                workers: Workers, name: str) -> int | None:
    found = listed(monkeypatch, capsys, workers)
    return None if found is None else found[name]["concurrency"]


def test_celery_inspect_active_queues_lists_the_three_queues(workers: Workers) -> None:
    done = run(workers.env, sys.executable, "-m", "celery", "-A", "tasks", "inspect",
               "active_queues", "-d", workers.auto.name, "--json", *REPLY_TIMEOUT)
    assert done.returncode == 0, done.stderr
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert [q["name"] for q in replies[workers.auto.name]] == ["high", "default", "low"]


def test_celeriac_workers_shows_each_worker_its_pool_and_queues(workers: Workers) -> None:
    done = run(workers.env, celeriac_cli(), "workers", *REPLY_TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert set(lines) == {workers.auto.name, workers.fixed.name}
    assert "pool=prefork" in lines[workers.auto.name]
    assert "autoscale=4,1" in lines[workers.auto.name]
    assert "queues=high,default,low" in lines[workers.auto.name]
    assert f"queues={SPARE_QUEUE}" in lines[workers.fixed.name]
    assert "autoscale" not in lines[workers.fixed.name]


def test_celery_autoscale_grows_the_pool_under_load(workers: Workers) -> None:
    celery = workers.app.extensions["celeriac"].queue.celery

    def processes() -> int | None:
        """The pool's size, or None when the worker did not reply in time (ask again)."""
        stats = celery.control.inspect(destination=[workers.auto.name], timeout=5,
                                       limit=1).stats()
        if not stats or workers.auto.name not in stats:
            return None
        return int(stats[workers.auto.name]["autoscaler"]["current"])

    assert wait_for(processes, timeout=30, interval=0.2, what="the pool's size") == 1
    client = workers.app.test_client()
    ids = [submit(client, {"input": f"Hello {i}", "metadata": {
        "simulator": {"latency_ms": 2000}}}) for i in range(4)]
    wait_for(lambda: processes() == 4, timeout=60, interval=0.2, what="the pool to grow to 4")
    for task_id in ids:
        assert wait_terminal(client, task_id, timeout=30)["status"] == "completed"


def test_scale_add_and_remove_a_queue(workers: Workers, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = celeriac(monkeypatch, capsys, workers.env, "scale", "add-queue", "extra",
                              *REPLY_TIMEOUT)
    assert code == 0, err
    assert f"{workers.auto.name}: ok: add consumer extra" in out
    assert f"{workers.fixed.name}: ok: add consumer extra" in out
    queues = {name: info["queues"]
              for name, info in both_listed(monkeypatch, capsys, workers).items()}
    assert queues == {workers.auto.name: ["high", "default", "low", "extra"],
                      workers.fixed.name: [SPARE_QUEUE, "extra"]}

    code, out, err = celeriac(monkeypatch, capsys, workers.env, "scale", "remove-queue",
                              "extra", "--destination", workers.fixed.name, *REPLY_TIMEOUT)
    assert code == 0, err
    assert out.strip() == f"{workers.fixed.name}: ok: no longer consuming from extra"
    code, _, err = celeriac(monkeypatch, capsys, workers.env, "scale", "remove-queue", "extra",
                            *REPLY_TIMEOUT)
    assert code == 0, err
    queues = {name: info["queues"]
              for name, info in both_listed(monkeypatch, capsys, workers).items()}
    assert queues == {workers.auto.name: ["high", "default", "low"],
                      workers.fixed.name: [SPARE_QUEUE]}


def test_scale_grow_and_shrink_a_prefork_pool(workers: Workers, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fixed = workers.fixed.name
    code, out, err = celeriac(monkeypatch, capsys, workers.env, "scale", "grow", "2", "-d", fixed,
                              *REPLY_TIMEOUT)
    assert (code, out.strip()) == (0, f"{fixed}: ok: pool will grow"), err
    wait_for(lambda: concurrency(monkeypatch, capsys, workers, fixed) == 3,
             timeout=60, interval=0.2, what="the pool to grow to 3")
    code, out, err = celeriac(monkeypatch, capsys, workers.env, "scale", "shrink", "2", "-d",
                              fixed, *REPLY_TIMEOUT)
    assert (code, out.strip()) == (0, f"{fixed}: ok: pool will shrink"), err
    wait_for(lambda: concurrency(monkeypatch, capsys, workers, fixed) == 1,
             timeout=60, interval=0.2, what="the pool to shrink to 1")


def test_scale_reports_a_refusal(workers: Workers, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = celeriac(monkeypatch, capsys, workers.env, "scale", "grow", "1", "-d",
                            workers.auto.name, *REPLY_TIMEOUT)
    assert code == 1
    assert "not supported with autoscale" in err


def test_no_worker_answering_is_an_error(workers: Workers, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["workers"], ["scale", "add-queue", "x"]):
        code, out, err = celeriac(monkeypatch, capsys, workers.env, *argv, "-d",
                                  "nobody@nowhere", "--timeout", "0.3")
        assert code == 1 and not out
        assert "no workers answered" in err


def test_an_unreachable_broker_is_an_error(workers: Workers, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.services import free_port

    env = {**workers.env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    code, _, err = celeriac(monkeypatch, capsys, env, "workers")
    assert code == 2
    assert "cannot reach the broker" in err


@pytest.mark.parametrize("argv", [
    ["workers"], ["scale"], ["scale", "grow"], ["scale", "shrink"], ["scale", "add-queue"],
    ["scale", "remove-queue"], ["run"], ["submit"], ["status"], ["cancel"],
])
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        celeriac_main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: celeriac" in capsys.readouterr().out

