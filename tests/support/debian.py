"""Install a Debian package a test needs, when it is missing and we may (root, with
apt). Locally without it the test skips; in CI (CI=1) it fails."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.services import IN_CI


def require_binary(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        path = shutil.which(binary)
    if path is None:
        message = f"{binary} (Debian package {package}) is not installed and cannot be"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
