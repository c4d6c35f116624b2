"""evaluation.device against the machine, before anything is written: a CUDA device this
machine lacks is refused in one line (it used to fail every baseline and blame the fitness),
and a search on the CPU of a GPU machine says so. This machine has no GPU: the CUDA side is
monkeypatched (torch.cuda.is_available / device_count), the only thing that cannot exist here."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from evomerge.errors import UserInputError
from evomerge.workers.device_check import check_device, idle_gpu_note
from evomerge.workers.ray_placement import placement_from


def _evaluation(device: str, gpus: float = 0.0, dtype: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(device=device, gpus_per_worker=gpus, dtype=dtype)


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_the_search_refuses_cuda_without_a_gpu_and_writes_nothing(tmp_path):
    """The real CLI on this CPU-only machine (its torch is a CPU build)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from tests.test_config import BASIC, _write

    exp = _write(tmp_path, BASIC + "    evaluation: {device: cuda}\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge.cli", "search", str(exp), "--run-dir", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: evaluation.device: 'cuda', but torch ")
    assert "sees no CUDA GPU here" in lines[0] and "set evaluation.device: cpu" in lines[0]
    assert not run.exists()


def test_a_gpu_index_past_the_machine_is_refused(monkeypatch):
    _gpus(monkeypatch, 2)
    check_device(_evaluation("cuda:1"), in_process=True)
    with pytest.raises(UserInputError, match=r"'cuda:2' needs cuda:2, but this machine has 2"):
        check_device(_evaluation("cuda:2"), in_process=True)
    with pytest.raises(UserInputError, match=r"'cuda:1' with gpus_per_worker 2 needs cuda:2"):
        check_device(_evaluation("cuda:1", gpus=2), in_process=True)
    check_device(_evaluation("cuda:3"), in_process=False)  # Ray: the workers' nodes decide


def test_a_device_torch_cannot_parse_is_refused_everywhere():
    for in_process in (True, False):
        with pytest.raises(UserInputError, match="'gpu' is not a torch device; use cpu, cuda"):
            check_device(_evaluation("gpu"), in_process=in_process)
    check_device(_evaluation("cpu"), in_process=True)


def test_an_idle_gpu_is_noted_only_for_a_cpu_search_in_process(monkeypatch):
    _gpus(monkeypatch, 0)
    assert idle_gpu_note(_evaluation("cpu"), in_process=True) is None
    _gpus(monkeypatch, 2)
    note = idle_gpu_note(_evaluation("cpu"), in_process=True)
    assert note == (
        "note: 2 CUDA GPU(s) visible, but evaluation.device is cpu: set evaluation.device: "
        "cuda to merge and score there"
    )
    assert idle_gpu_note(_evaluation("cpu"), in_process=False) is None
    assert idle_gpu_note(_evaluation("cuda"), in_process=True) is None


def test_an_in_process_worker_uses_the_gpu_it_names():
    """cuda:1 used to place the resident model on cuda:0."""
    assert placement_from(_evaluation("cuda:1")).devices == ("cuda:1",)
    assert placement_from(_evaluation("cuda:1", gpus=2)).devices == ("cuda:1", "cuda:2")
    assert placement_from(_evaluation("cuda")).devices == ("cuda:0",)
    assert placement_from(_evaluation("cuda", dtype="float32")).dtype == "float32"
    assert placement_from(_evaluation("cpu")).devices == ("cpu",)
