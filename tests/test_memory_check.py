"""A CPU search whose models alone exceed this machine's available memory says so before it
starts (the kernel would kill it while loading them, with no message). Real model folders and
a real peft adapter; only the available memory is given, to make the two cases."""

from __future__ import annotations

import math

import pytest
from safetensors import safe_open

from evomerge.config import load_experiment
from evomerge.experiment import resolve_experiment
from evomerge.workers.memory_check import GIB, available_bytes, floor_bytes, memory_note
from tests.helpers.search_fixtures import make_family, write_experiment
from tests.test_lora_inputs import make_adapter


def _params(folder: str, names: set[str] | None = None) -> int:
    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        keys = [k for k in f.keys() if names is None or k in names]  # noqa: SIM118
        return sum(math.prod(f.get_slice(k).get_shape()) for k in keys)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    fam = make_family(root)
    fam["adapter"] = str(
        make_adapter(fam["base"], root / "lora", seed=3, r=4, target_modules=["q_proj", "v_proj"])
    )
    return fam


def test_the_floor_counts_each_model_once_and_an_adapter_as_what_it_changes(family, tmp_path):
    exp = write_experiment(tmp_path, family, max_evals=5, popsize=5)
    text = exp.read_text().replace(family["experts"][1], family["adapter"])
    exp.write_text(text)
    e = resolve_experiment(load_experiment(exp), tmp_path / "run")
    base, expert = _params(family["base"]), _params(family["experts"][0])
    targeted = {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in range(4) for m in "qv"}
    changed = _params(family["base"], targeted)
    assert changed > 0
    # expert0, the base (also the adapter's base), the adapter's q/v, one resident model
    assert floor_bytes(e) == 4 * (expert + base + changed + max(expert, base))


def test_a_search_that_cannot_hold_its_models_is_told_before_it_starts(family, tmp_path):
    e = resolve_experiment(
        load_experiment(write_experiment(tmp_path, family, max_evals=5, popsize=5)), tmp_path / "r"
    )
    need = floor_bytes(e)
    note = memory_note(e, in_process=True, available=need - 1)
    assert note is not None and note.startswith("note: the experts, the base and the resident")
    assert f"at least {need / GIB:.1f} GiB in float32" in note and "larger node" in note
    assert memory_note(e, in_process=True, available=need) is None
    assert memory_note(e, in_process=False, available=1) is None  # Ray: the workers' nodes
    assert available_bytes() is None or memory_note(e, in_process=True) is None  # it fits here
