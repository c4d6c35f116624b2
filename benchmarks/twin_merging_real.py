"""Twin-Merging (Lu et al. 2024, arXiv 2406.15479) on a real tied-embedding model with LoRA
experts: SmolLM2-135M-Instruct (``zoo:smollm2-experts/instruct``, tied head) and its skill and
language adapters (docs/real_experts.md), scored like benchmarks/real_search.py.

    python benchmarks/twin_merging.py --real [--ranks 16 4] [--items 40] [--skip-sources]

The router learns from the first ``--items`` test questions of each expert's task (the
experiments' search items), as the chat-templated prompts lm-eval feeds the model; every score
is exact match on the validation items (the next 40: items 40–79), zero-shot, through the same
lm-eval path as the real-model search benchmark. Rows: the instruct model, each expert, the best
simple merge of real_search.py (task arithmetic, weight 0.5: the first of the merges tied at 0
on the target), and Twin-Merging with that merge as its shared part at each rank (rank 16 =
the two rank-8 adapters' summed rank: every exclusive part exact). Deterministic (no timings).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from real_search import BASE, LANGUAGE, REPO, SKILL, TASKS, score

EXPERTS = {"skill": (SKILL, "real_shift"), "language": (LANGUAGE, "real_zel")}
BEST_STATIC = {"merge_method": "task_arithmetic", "parameters": {"weight": 0.5}}


def router_prompts(task: str, items: int, out: Path) -> Path:
    """The first ``items`` questions of ``task`` as the chat prompts the model is scored on."""
    from transformers import AutoTokenizer

    from evomerge.config import resolve_model_ref
    from evomerge.zoo.real_tasks import messages

    tok = AutoTokenizer.from_pretrained(resolve_model_ref(BASE))
    rows = (REPO / "fitness" / task / "test.jsonl").read_text().splitlines()[:items]
    path = out / f"{task}.jsonl"
    with path.open("w") as f:
        for row in rows:
            chat = messages(json.loads(row)["question"])
            text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            f.write(json.dumps({"prompt": text}) + "\n")
    return path


def route_shares(folder: Path, start: int, items: int) -> dict[str, list[float]]:
    """Per task, the mean merge weight of each expert on validation prompts start..start+items
    (chat-templated as scored), from the folder loaded as transformers loads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.zoo.real_tasks import messages

    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    out = {}
    for label, task in TASKS.items():
        rows = (REPO / "fitness" / task / "test.jsonl").read_text().splitlines()
        weights = []
        for row in rows[start : start + items]:
            chat = messages(json.loads(row)["question"])
            ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
            weights.append(model.route(ids)[0])
        out[label] = [round(float(w), 3) for w in torch.stack(weights).mean(0)]
    return out


def _static(folder: Path) -> Path:
    import yaml

    from evomerge.config import resolve_model_ref

    body = {
        "merge_method": BEST_STATIC["merge_method"],
        "base_model": resolve_model_ref(BASE),
        "models": [
            {"model": resolve_model_ref(ref), "parameters": BEST_STATIC["parameters"]}
            for ref, _ in EXPERTS.values()
        ],
    }
    path = folder / "best_static.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run(ranks: list[int], items: int, skip_sources: bool, out: Path | None) -> list[dict]:
    from evomerge.twin.build import build_twin
    from evomerge.twin.config import parse_twin_config

    val = dict.fromkeys(TASKS, "validation")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        experts = {
            n: {"model": ref, "prompts": str(router_prompts(task, items, root))}
            for n, (ref, task) in EXPERTS.items()
        }
        for rank in ranks:
            cfg = parse_twin_config(
                {
                    "base_model": BASE,
                    "experts": experts,
                    "shared": BEST_STATIC,
                    "rank": rank,
                    "router": {"items": items},
                },
                "benchmark",
            )
            folder = root / f"twin-r{rank}"
            s = build_twin(cfg, folder, overwrite=True)
            note = (
                f"router train acc {s.router_train_accuracy:.3f} ({s.router_examples} prompts), "
                f"‖v_t‖² kept {min(s.kept_energy.values()):.3f}, {s.matrices_from_adapter_factors}"
                f" matrices from LoRA factors, {s.matrices_by_full_svd} by full SVD, "
                f"{s.bytes / 1e6:.1f} MB"
            )
            shares = route_shares(folder, items, items)
            note += ", mean route weights (skill, language) " + ", ".join(
                f"{k} {tuple(v)}" for k, v in shares.items()
            )
            rows.append({"model": f"Twin-Merging r={rank}", **score(folder, val), "notes": note})
            print(rows[-1], flush=True)
        if not skip_sources:
            sources = {"instruct": BASE, "skill expert": SKILL, "language expert": LANGUAGE}
            sources["best simple merge (task arithmetic w=0.5)"] = str(_static(root))
            for name, ref in sources.items():
                rows.append({"model": name, **score(ref, val), "notes": ""})
                print(rows[-1], flush=True)
    print("\n| model | target | skill task | language task | notes |\n|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f}" for k in TASKS)
        print(f"| {r['model']} | {cells} | {r['notes']} |")
    return rows
