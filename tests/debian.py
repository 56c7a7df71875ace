"""System programs a test needs from Debian packages: found, installed (as root with apt-get,
the way CI's machine allows), or the test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

APT_TIMEOUT_S = 300


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S)


def require(files: dict[str, str]) -> None:
    """Make every ``file`` (a program or a plugin path) of ``{file: debian_package}`` exist:
    install the missing packages, or skip the test saying which and why."""
    missing = {f: p for f, p in files.items() if not (Path(f).exists() or shutil.which(f))}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs the Debian package(s) {' '.join(packages)} (apt-get install); "
                    "not installed and this user cannot install them")
    done = _apt_get("install", "-y", "-q", "--no-install-recommends", *packages)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        _apt_get("update", "-q")
        done = _apt_get("install", "-y", "-q", "--no-install-recommends", *packages)
    still = [f for f in missing if not (Path(f).exists() or shutil.which(f))]
    if done.returncode != 0 or still:
        pytest.skip(f"could not install {' '.join(packages)}: {done.stderr.strip()[-300:]}")
