"""The embedded Ray cluster (``--workers N``): token authentication on, without Ray's notice.

Ray turns token authentication on for a new local cluster and prints a WARNING about it on
every start; evomerge keeps the default and drops only that line (``ray_cluster.connect``).
Each case starts a fresh Ray in a subprocess with its own HOME, so Ray's token file is written
there and no cluster of another test is reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
from evomerge.workers.ray_cluster import connect
try:
    from ray._raylet import get_authentication_mode
except ImportError:  # a Ray from before token authentication
    raise SystemExit(3)
ray, owned = connect(None, num_cpus=1)

@ray.remote
def plus_one(x):
    return x + 1

print("result", ray.get(plus_one.remote(1)), "owned", owned, "mode", get_authentication_mode())
ray.shutdown()
"""


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    clean.update(HOME=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=clean, capture_output=True, text=True, timeout=180
    )
    if out.returncode == 3:
        pytest.skip("this Ray has no token authentication")
    return out


def test_local_cluster_runs_with_token_auth_and_no_notice(tmp_path):
    out = _start(tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "result 2 owned True" in out.stdout
    assert "mode 1" in out.stdout  # AuthenticationMode.TOKEN
    assert (tmp_path / ".ray" / "auth_token").is_file()  # Ray's default, kept
    assert "Token authentication is enabled" not in out.stdout + out.stderr


def test_ray_auth_mode_disabled_turns_it_off(tmp_path):
    out = _start(tmp_path, RAY_AUTH_MODE="disabled")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "result 2 owned True" in out.stdout
    assert "mode 0" in out.stdout
