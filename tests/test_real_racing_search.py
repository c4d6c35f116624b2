"""experiments/real_ps_racing.yaml end to end on a real model, in CI time.

The experiment as committed needs the smollm2-experts zoo (a 34-minute build), so no CI test
can run it. Here its YAML is loaded and run with what CI can afford swapped in: the experts are
two LoRA adapters with random weights on SmolLM2-135M-Instruct (tied head, chat template;
applied in memory), the task is smollm2_chat_mc (12 hand-written chat questions scored by
log-likelihood: 8 searched, 4 for validation) instead of real_target (which an untrained
SmolLM2 nearly never answers, so every candidate would tie), and racing gets slices and a
budget sized for 8 items (a first slice of 4, then 2; 4 candidates a generation, 48 item
evaluations). Everything else is the experiment's: task arithmetic over three layer groups,
racing for CMA-ES's best mu with ``settle: set``, ``confidence: 0.8``, ``indifference: 0.01``
and ``archive_places: 0``, the winner chosen on the validation items. With that indifference
zone every candidate here stops after its first slice (seeds 0-5 on the machine the test was
written on), as every one of the experiment's own 64 did after its 10 items: racing as a
first-slice screen, validation as the judge.

What must hold on a real model: racing stops candidates before the search's items are all
scored and the store counts exactly the items it scored, the archive is ranked by validation,
``status`` says both, and the winner's stored validation score is what a fresh lm-eval ``hf``
run of the archived folder gives on the 4 items after the search's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.commands.status import status
from evomerge.search_cli import search
from evomerge.store import RunStore
from evomerge.validation import ranking
from tests.helpers.real_models import require_package
from tests.test_lm_eval_parity import hf_run
from tests.test_lora_inputs import make_adapter
from tests.test_racing import _racing_meta, _snapshot

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
TASK = "smollm2_chat_mc"
SEARCH_ITEMS, VALIDATION_ITEMS = 8, 4  # the task has 12
FIRST_SLICE = 4
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def experiment(root: Path, smollm2: Path) -> Path:
    exp = yaml.safe_load((REPO / "experiments" / "real_ps_racing.yaml").read_text())
    exp["name"] = "real_ps_racing_ci"
    # B at 0.3 (not make_adapter's 0.05): merges then answer some items differently
    exp["models"] = [
        str(make_adapter(smollm2, root / f"expert{i}", i, b_scale=0.3, **LORA)) for i in (1, 2)
    ]
    exp["base_model"] = str(smollm2)
    task = exp["fitness"]["tasks"][0]
    del task["system_instruction"]
    task.update(
        task=TASK, include_path=str(REPO / "fitness" / TASK), limit=SEARCH_ITEMS, batch_size=8
    )
    exp["fitness"]["validation"]["items"] = VALIDATION_ITEMS
    exp["fitness"]["racing"].update(first_slice=FIRST_SLICE, slice=2)
    exp["driver"]["options"]["popsize"] = 4
    exp["budget"] = {"max_item_evals": 48}
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_real_ps_racing_settings_on_smollm2(smollm2_dir, tmp_path, capsys):
    require_package("peft")
    run = tmp_path / "run"
    assert search(experiment(tmp_path, smollm2_dir), run) == 0
    meta = _racing_meta(_snapshot(run)[0])
    with RunStore.open(run, readonly=True) as store:
        items, partial, ranked = store.item_evals(), store.partial_idx(), ranking(store)
    n = len(meta)
    assert n >= 8 and all(m and m["of"] == SEARCH_ITEMS for m in meta), meta
    assert partial, "racing stopped no candidate early"
    assert all(m["items"] >= FIRST_SLICE for m in meta), meta
    assert items == sum(m["items"] for m in meta) < n * SEARCH_ITEMS

    assert ranked.enabled and ranked.by == "validation score"
    assert all(m.validated and m.error is None for m in ranked.members)
    scores = [m.validation for m in ranked.members]
    assert scores == sorted(scores, reverse=True)
    status(run)
    out = capsys.readouterr().out
    assert "racing stopped" in out and "winner by validation score" in out

    # the stored validation score is a fresh lm-eval run's on the items after the search's
    winner = ranked.members[0]
    fresh = hf_run(
        run / "archive" / winner.digest,
        {
            "task": TASK,
            "limit": SEARCH_ITEMS + VALIDATION_ITEMS,
            "batch_size": 8,
            "apply_chat_template": True,
        },
    )
    assert winner.validation == pytest.approx(sum(fresh[SEARCH_ITEMS:]) / VALIDATION_ITEMS)
