"""What the figures were measured on: the machine and the versions of everything."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from config.settings import PROJECT_DIR

PACKAGES = {
    "celery": "celery",
    "kombu": "kombu",
    "redis-py": "redis",
    "flask": "flask",
    "gunicorn": "gunicorn",
    "anthropic": "anthropic",
    "openai": "openai",
    "sqlalchemy": "sqlalchemy",
}


def machine() -> dict[str, object]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": _cpu_model(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        # The machine is shared: the load when the bench started says how quiet it was.
        "load_avg_1m_at_start": round(load1, 2),
        "load_avg_5m_at_start": round(load5, 2),
    }


def versions(redis_server: str) -> dict[str, str]:
    found = {name: _version(dist) for name, dist in PACKAGES.items()}
    found["redis-server"] = redis_server
    found["celeriac"] = git_commit()
    return found


def git_commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                              check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    commit = head.stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return f"{commit} (with uncommitted changes)" if dirty else commit


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
