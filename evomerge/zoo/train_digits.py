"""Train and save the ``digits`` zoo: the transform experts and M2N2's two settings."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from evomerge.zoo.digits import digits_data, new_digits_model, save_digits_model, train_digits


def _base_data(spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain digits plus a small slice of every transform: a base that has seen a little of each."""
    x, y = digits_data("train")
    xs, ys = [x], [y]
    n = int(spec.base_transform_fraction * len(y))
    for t in spec.transforms:
        xt, yt = digits_data("train", t)
        xs.append(xt[:n])
        ys.append(yt[:n])
    return torch.cat(xs), torch.cat(ys)


def build_digits_zoo(spec, out: Path, *, seed: int, progress: bool) -> dict:
    from tqdm.auto import tqdm

    models: dict[str, dict] = {}
    total = 5 + len(spec.transforms) + spec.scratch_models
    with tqdm(total=total, desc=f"zoo {spec.name}", disable=not progress, leave=False) as bar:
        base = new_digits_model(seed, spec.hidden)
        xb, yb = _base_data(spec)
        train_digits(base, xb, yb, epochs=spec.base_epochs, lr=1e-3, seed=seed * 1000 + 1)
        save_digits_model(base, out / "base")
        models["base"] = {
            "path": "base",
            "role": "base",
            "expert_in": "digits",
            "group": "transforms",
        }
        bar.update()
        for i, t in enumerate(spec.transforms):
            model = copy.deepcopy(base)
            x, y = digits_data("train", t)
            train_digits(
                model, x, y, epochs=spec.expert_epochs, lr=spec.expert_lr, seed=seed * 1000 + 10 + i
            )
            save_digits_model(model, out / f"expert_{t}")
            models[f"expert_{t}"] = {
                "path": f"expert_{t}",
                "role": "expert",
                "expert_in": f"digits_{t}",
                "group": "transforms",
            }
            bar.update()
        for i in range(spec.scratch_models):
            # M2N2's from-scratch setting: independent random inits, reference width, no training.
            save_digits_model(new_digits_model(seed * 1000 + 100 + i), out / f"scratch_{i}")
            models[f"scratch_{i}"] = {
                "path": f"scratch_{i}",
                "role": "scratch",
                "expert_in": None,
                "group": "scratch",
            }
            bar.update()
        x, y = digits_data("train")
        for i, (lo, hi) in enumerate(((0, 4), (5, 9))):
            # M2N2's second setting: two experts from different inits, each on half of the classes.
            keep = (y >= lo) & (y <= hi)
            model = new_digits_model(seed * 1000 + 200 + i)
            train_digits(
                model,
                x[keep],
                y[keep],
                epochs=spec.half_epochs,
                lr=1e-3,
                seed=seed * 1000 + 210 + i,
            )
            name = f"half_{lo}to{hi}"
            save_digits_model(model, out / name)
            models[name] = {
                "path": name,
                "role": "expert",
                "expert_in": f"digits {lo}-{hi}",
                "group": "halves",
            }
            bar.update()
        for i in range(2):
            # PLeaS's setting: the same data and training, different random inits
            model = new_digits_model(
                seed * 1000 + 300 + i, spec.init_pair_hidden, depth=spec.init_pair_depth
            )
            train_digits(
                model, x, y, epochs=spec.init_pair_epochs, lr=1e-3, seed=seed * 1000 + 310 + i
            )
            name = f"init_{i}"
            save_digits_model(model, out / name)
            models[name] = {"path": name, "role": "expert", "expert_in": "digits", "group": "inits"}
            bar.update()
        bar.update()
    return models
