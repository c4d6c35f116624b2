"""Train and save an LM zoo described by an ``LMZooSpec``."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from evomerge.zoo import model_cache
from evomerge.zoo.lm import mixture, new_model, save_lm, train
from evomerge.zoo.tasks import train_sampler
from evomerge.zoo.tokenizer import build_tokenizer


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", leave=False)


def _freeze_except(model, trainable: tuple[str, ...]) -> None:
    """Only parameters whose name matches one of ``trainable`` get gradients (all when empty);
    AdamW leaves a parameter without a gradient untouched, so the rest stay the base's bits."""
    from evomerge.errors import UserInputError

    if not trainable:
        return
    pats = [re.compile(p) for p in trainable]
    names = [n for n, _ in model.named_parameters()]
    for pat in pats:
        if not any(pat.search(n) for n in names):
            raise UserInputError(
                f"ExpertSpec.trainable: {pat.pattern!r} matches no parameter; names look like "
                f"{names[0]!r}, {names[-1]!r}"
            )
    for n, p in model.named_parameters():
        p.requires_grad_(any(pat.search(n) for pat in pats))


def build_lm_zoo(spec, out: Path, *, seed: int, progress: bool) -> dict:
    """Pretrain the base, fine-tune each expert from it; returns the manifest's ``models``.

    A model some other zoo already trained with the same recipe is reused from the model cache
    (``evomerge.zoo.model_cache``) instead of trained again. Experts always start from the base
    as saved (its float32 safetensors read back into a fresh model), so their bytes are the same
    whether the base was trained now or reused."""
    tok = build_tokenizer()
    total = spec.base_phase.steps + sum(e.phase.steps for e in spec.experts.values())
    vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()
    base_key = model_cache.model_key(
        {
            "shape": spec.shape,
            "vocab": vocab,
            "threads": spec.threads,
            "init_seed": seed,
            "mix": spec.base_mix,
            "phase": spec.base_phase,
            "seed": seed * 1000 + 1,
        }
    )
    models: dict[str, dict] = {}
    with _progress_bar(total, progress, f"zoo {spec.name}") as bar:
        bar.set_postfix_str("base")
        if model_cache.fetch(base_key, out / "base"):
            bar.update(spec.base_phase.steps)
        else:
            base = new_model(spec.shape, len(tok), seed)
            base_mix = mixture([(w, train_sampler(t)) for t, w in spec.base_mix.items()])
            train(base, tok, base_mix, spec.base_phase, seed=seed * 1000 + 1, progress=bar.update)
            save_lm(base, tok, out / "base")
            model_cache.store(base_key, out / "base")
        models["base"] = {"path": "base", "role": "base", "expert_in": None}
        base = _load_saved(spec.shape, len(tok), out / "base")
        for i, (name, ex) in enumerate(spec.experts.items()):
            bar.set_postfix_str(name)
            key = model_cache.model_key(
                {
                    "base": base_key,
                    "trainable": ex.trainable,
                    "mix": ex.mix,
                    "phase": ex.phase,
                    "seed": seed * 1000 + 10 + i,
                }
            )
            models[name] = {"path": name, "role": "expert", "expert_in": ex.expert_in}
            if model_cache.fetch(key, out / name):
                bar.update(ex.phase.steps)
                continue
            model = copy.deepcopy(base)
            _freeze_except(model, ex.trainable)
            mix = mixture([(w, train_sampler(t)) for t, w in ex.mix.items()])
            train(model, tok, mix, ex.phase, seed=seed * 1000 + 10 + i, progress=bar.update)
            save_lm(model, tok, out / name)
            model_cache.store(key, out / name)
    return models


def _load_saved(shape, vocab_size: int, folder: Path):
    """The model saved at ``folder``, read into a freshly built model of the zoo's shape (the
    same module and config as a trained one, so training it further runs the same kernels)."""
    from safetensors.torch import load_file

    model = new_model(shape, vocab_size, 0)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def build_seed_models(spec, out: Path, *, seed: int, progress: bool) -> dict:
    """Train one model per entry of ``spec.seeds`` from its own random init on ``spec.mix``
    (same batches for all: only the init differs); returns the manifest's ``models``."""
    tok = build_tokenizer()
    mix = mixture([(w, train_sampler(t)) for t, w in spec.mix.items()])
    models: dict[str, dict] = {}
    with _progress_bar(spec.phase.steps * len(spec.seeds), progress, f"zoo {spec.name}") as bar:
        for s in spec.seeds:
            name = f"seed_{s}"
            bar.set_postfix_str(name)
            model = new_model(spec.shape, len(tok), seed * 1000 + 500 + s)
            train(model, tok, mix, spec.phase, seed=seed * 1000 + 1, progress=bar.update)
            save_lm(model, tok, out / name)
            models[name] = {"path": name, "role": "source", "expert_in": None, "group": "seeds"}
    return models
