"""Weight rules: model weights computed from the models themselves, resolved before planning.

A recipe may set ``weight`` (globally or on every non-base model) to a rule instead of numbers:

- ``{rule: varm}`` — VaRM, Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models". For
  each weight matrix m the weight of model i is its variation ratio

      w_i,m = E[(θ_i,m − θ_0,m)²] / Σ_j E[(θ_j,m − θ_0,m)²]

  (E = mean over the matrix's elements; θ_0 = base_model). A tensor no model moved gets 1/N.
- ``{rule: mwa, metric: loss|step, values: [v_1, ..., v_N], penalty: p}`` — metrics-weighted
  averaging, Yu & Choi 2025, "Parameter-Efficient Checkpoint Merging via Metrics-Weighted
  Averaging": one weight per model from its training loss (lower is better) or step (later is
  better), sharpened by the single penalty factor p:

      loss:  w_i = L_i^(−p) / Σ_j L_j^(−p)          step:  w_i = s_i^p / Σ_j s_j^p

  so p = 0 is the uniform average. ``values`` lists the non-base models in recipe order; a
  per-model rule gives its own ``value`` instead. (We could not check this power form against
  the paper's text offline; it has the properties the abstract states — one hyperparameter for
  any number of checkpoints, lower loss / later step weighs more.)

``resolve_weight_rules`` turns the rule into plain numbers — a scalar per model (MWA) or one
``{filter: <tensor name>, value}`` rule per tensor (VaRM) — and sets the global ``weight`` to 0
(it then only reaches a base model the planner adds as a source, whose variation is 0). The
result is an ordinary recipe: mergekit-exportable, with a digest. VaRM weights are computed in
float64 and rounded to 8 significant digits, so the same models give the same recipe on any
machine (reduction order can move the last bits of a float64 mean).
"""

from __future__ import annotations

from typing import Any

from evomerge.errors import UserInputError
from evomerge.recipe import FilterRule, Recipe, WeightRule

_DIGITS = 8


def _round(x: float) -> float:
    return float(f"{x:.{_DIGITS}g}")


def has_weight_rules(recipe: Recipe) -> bool:
    scopes = [recipe.parameters, *(m.parameters for m in recipe.models or [])]
    scopes += [s.parameters for sl in recipe.slices or [] for s in sl.sources]
    scopes += [sl.parameters for sl in recipe.slices or []]
    for sc in scopes:
        for key, value in sc.items():
            if key != "weight" and isinstance(value, WeightRule):
                raise UserInputError(
                    f"parameter {key!r}: weight rules ({value.rule}) only compute 'weight'; "
                    "give a number, a gradient list or filter rules"
                )
    return any(isinstance(sc.get("weight"), WeightRule) for sc in scopes)


def mwa_weights(metric: str, values: list[float], penalty: float) -> list[float]:
    """Metrics-weighted averaging: normalised L^(−p) (loss) or s^p (step)."""
    if metric not in ("loss", "step"):
        raise UserInputError(f"weight rule mwa: metric must be 'loss' or 'step', got {metric!r}")
    if any(v <= 0 for v in values):
        raise UserInputError(f"weight rule mwa: every {metric} value must be > 0, got {values}")
    sign = -1.0 if metric == "loss" else 1.0
    raw = [float(v) ** (sign * penalty) for v in values]
    total = sum(raw)
    return [r / total for r in raw]


def varm_weights(base: str, refs: list[str], source: Any) -> dict[str, list[float]]:
    """FuseChat's variation ratios: tensor name → one weight per model in ``refs``."""
    out: dict[str, list[float]] = {}
    for name in source.names(base):
        if not all(source.has(r, name) for r in refs):
            continue  # the planner reports (or maps, for tied heads) missing tensors
        b = source.tensor(base, name)
        if not b.is_floating_point():
            continue
        b = b.double()
        moved = [float((source.tensor(r, name).double() - b).square().mean()) for r in refs]
        total = sum(moved)
        n = len(refs)
        out[name] = [_round(m / total) for m in moved] if total > 0 else [_round(1 / n)] * n
    return out


def _model_rules(recipe: Recipe) -> tuple[list[int], list[WeightRule]]:
    """Indices of the non-base models and the rule each one uses; all or none must have one."""
    glob = recipe.parameters.get("weight")
    idx = [i for i, m in enumerate(recipe.models) if m.model != recipe.base_model]
    rules = []
    for i in idx:
        own = recipe.models[i].parameters.get("weight", glob)
        if not isinstance(own, WeightRule):
            raise UserInputError(
                f"models[{i}] ({recipe.models[i].model}): weight is {own!r} while another weight "
                "is a rule; a weight rule normalises across models, so give every non-base model "
                "the same rule (or set it once in the global parameters)"
            )
        rules.append(own)
    kinds = {(r.rule, r.metric, r.penalty) for r in rules}
    if len(kinds) > 1:
        raise UserInputError(
            f"weight rules differ between models ({sorted(kinds, key=str)}); use one rule"
        )
    return idx, rules


def _mwa_values(recipe: Recipe, idx: list[int], rules: list[WeightRule]) -> list[float]:
    """Each non-base model's metric: its own rule's ``value``, else the global ``values[k]``."""
    glob = recipe.parameters.get("weight")
    listed = glob.values if isinstance(glob, WeightRule) else None
    if listed is not None and len(listed) != len(idx):
        raise UserInputError(
            f"parameters.weight (mwa): {len(listed)} values for {len(idx)} non-base models; "
            "give one value per model, in the order of 'models'"
        )
    vals = []
    for k, (i, r) in enumerate(zip(idx, rules)):
        v = r.value if r.value is not None else (listed[k] if listed is not None else None)
        if v is None:
            raise UserInputError(
                f"models[{i}] ({recipe.models[i].model}): weight rule mwa needs this model's "
                "metric; set 'values' (one per model) on the global rule or 'value' on the model"
            )
        vals.append(float(v))
    return vals


def resolve_weight_rules(recipe: Recipe, source: Any) -> Recipe:
    """``recipe`` with every weight rule replaced by explicit (per-tensor) weights."""
    if not has_weight_rules(recipe):
        return recipe
    if recipe.models is None:
        raise UserInputError("weight rules (varm, mwa) need a 'models' recipe, not 'slices'")
    idx, rules = _model_rules(recipe)
    rule = rules[0]
    if rule.rule == "varm":
        if not recipe.base_model:
            raise UserInputError("weight rule varm measures change from base_model; set one")
        refs = [recipe.models[i].model for i in idx]
        table = varm_weights(recipe.base_model, refs, source)
        # Longest names first: a filter matches by substring, so no name can catch a longer one.
        names = sorted(table, key=lambda n: (-len(n), n))
        new = {
            i: [FilterRule(filter=n, value=table[n][k]) for n in names] for k, i in enumerate(idx)
        }
    else:
        if rule.metric is None:
            raise UserInputError("weight rule mwa: set metric: loss or metric: step")
        ws = mwa_weights(rule.metric, _mwa_values(recipe, idx, rules), rule.penalty)
        new = {i: _round(w) for i, w in zip(idx, ws)}
    return _with_weights(recipe, new)


def _with_weights(recipe: Recipe, new: dict[int, Any]) -> Recipe:
    models = []
    for i, m in enumerate(recipe.models):
        params = dict(m.parameters)
        if i in new:
            params["weight"] = new[i]
        elif isinstance(params.get("weight"), WeightRule):
            params["weight"] = 0.0  # the base model listed among the models: it did not move
        models.append(m.model_copy(update={"parameters": params}))
    glob = dict(recipe.parameters)
    if isinstance(glob.get("weight"), WeightRule):
        glob["weight"] = 0.0
    return Recipe.model_validate(
        {**recipe.model_dump(), "models": [m.model_dump() for m in models], "parameters": glob}
    )
