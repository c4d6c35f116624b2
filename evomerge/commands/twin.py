"""``evomerge twin-merge CONFIG.yaml --out DIR``: build a Twin-Merging model folder
(``evomerge.twin``; docs/twin_merging.md)."""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out


def twin_merge(config: Path, out_dir: Path, overwrite: bool = False) -> int:
    from evomerge.twin.build import build_twin
    from evomerge.twin.config import load_twin_config

    cfg = load_twin_config(config)
    s = build_twin(cfg, out_dir, base_dir=Path(config).resolve().parent, overwrite=overwrite)
    kept = ", ".join(f"{e} {v:.2f}" for e, v in s.kept_energy.items())
    out.print(
        f"wrote {out_dir}: shared {s.shared['merge_method']}, {len(s.experts)} experts at rank "
        f"{s.rank} (share of each exclusive part kept: {kept}), router accuracy on its "
        f"{s.router_examples} examples {s.router_train_accuracy:.3f}, {s.bytes / 1e6:.2f} MB",
        markup=False,
        highlight=False,
    )
    out.print(
        "load it with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True); "
        "lm-eval: --model hf --model_args pretrained=DIR,trust_remote_code=True",
        markup=False,
        highlight=False,
    )
    return 0
