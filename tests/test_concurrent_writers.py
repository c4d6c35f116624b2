"""Shared places written by several processes: two `zoo build`s of one zoo into a cold cache
(one builds, the other waits and reuses it), and `merge` leftovers of killed writers (removed on
the next merge into the same place; a live writer's are kept). Real processes throughout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge.io.lock import FileLock
from evomerge.io.writer import UNLOCKED_GRACE_S, WRITER_LOCK
from evomerge.zoo.build import config_hash
from tests.helpers.tiny_models import make_tiny_llama_family

pytestmark = pytest.mark.timeout(300)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_two_zoo_builds_into_a_cold_cache(tmp_path):
    env = {**ENV, "EVOMERGE_CACHE": str(tmp_path / "cache")}
    zoo = tmp_path / "cache" / "zoo"
    name = f"digits-{config_hash('digits', quick=True)}"
    zoo.mkdir(parents=True)
    (zoo / f".{name}.tmp-999999").mkdir()  # a killed builder's leftover
    gate = FileLock(zoo / f".{name}.lock")
    assert gate.try_acquire()  # hold both builders at the start line, so they truly overlap
    cmd = [sys.executable, "-m", "evomerge.cli", "zoo", "build", "digits", "--quick"]
    errs = [tmp_path / f"err{i}" for i in range(2)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=e.open("w")) for e in errs
    ]
    deadline = time.monotonic() + 120
    while not all("waiting to reuse it" in e.read_text() for e in errs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in errs[0].read_text()
    gate.release()
    outs = [p.communicate(timeout=240)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.read_text()[-2000:] for e in errs]
    assert outs[0] == outs[1] == str(zoo / name)
    assert (zoo / name / "zoo.json").is_file()
    assert sorted(p.name for p in zoo.iterdir()) == [f".{name}.lock", name]


HOLD = """
import os, sys, time
from evomerge.io.lock import FileLock
tmp = sys.argv[1]
os.makedirs(tmp)
open(os.path.join(tmp, "model.safetensors"), "wb").write(b"x" * 1000)
assert FileLock(os.path.join(tmp, "{lock}")).try_acquire()
print("ready", flush=True)
time.sleep(600)
""".replace("{lock}", WRITER_LOCK)


def writer(tmp: Path) -> subprocess.Popen:
    """A process that holds a merge writer's temporary folder, as a merge does mid-write."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp)], env=ENV, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    return p


def test_merge_removes_dead_writers_leftovers_only(tmp_path):
    base, experts = make_tiny_llama_family(tmp_path / "m", n_experts=2, layers=2, hidden=16)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"merge_method: linear\nmodels:\n  - {{model: {experts[0]}, parameters: {{weight: 0.5}}}}"
        f"\n  - {{model: {experts[1]}, parameters: {{weight: 0.5}}}}\n"
    )
    killed = writer(tmp_path / ".out.tmp-killed1")
    killed.kill()
    killed.wait()
    live = writer(tmp_path / ".out.tmp-alive001")
    old = tmp_path / ".out.tmp-old00001"  # an older evomerge's leftover: no lock file
    old.mkdir()
    long_ago = time.time() - 2 * UNLOCKED_GRACE_S
    os.utime(old, (long_ago, long_ago))
    young = tmp_path / ".out.tmp-young001"  # no lock file yet, just created: maybe alive
    young.mkdir()
    other = tmp_path / ".other.tmp-killed1"  # another --out's: not ours to judge
    other.mkdir()
    try:
        cmd = [sys.executable, "-m", "evomerge.cli", "merge", str(cfg), "--out"]
        res = subprocess.run([*cmd, str(tmp_path / "out"), "-q"], env=ENV, capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
        hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert hidden == [".other.tmp-killed1", ".out.tmp-alive001", ".out.tmp-young001"]
        assert not (tmp_path / "out" / WRITER_LOCK).exists()
    finally:
        live.kill()
        live.wait()
