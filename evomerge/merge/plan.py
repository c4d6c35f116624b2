"""Planning a merge: which output tensors, from which source tensors, with which parameters.

The plan follows mergekit 0.1.5's layout rules so that a mergekit config means the same thing
here: a ``models`` recipe is one slice over every model's full depth (the base model is added as
a source when it is not listed); layers are numbered consecutively across slices; embeddings
are merged like the first slice and the final norm / LM head like the last one (gradients at
t = 0). One deliberate difference: for single-source operators (``passthrough``, the building
block of data-flow recipes) with a ``base_model``, the non-layer tensors are copied from the
base model — mergekit takes them from the first and last slice's models instead; the two agree
whenever the path starts and ends on the base model.

Planning reads only headers and configs; no tensor data (``DiskSource`` knows shapes from the
safetensors headers).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from evomerge.errors import UserInputError
from evomerge.merge.checks import check_architectures, check_model_count, check_shapes, shape_of
from evomerge.merge.ops import OpSpec, get_op
from evomerge.merge.params import resolve
from evomerge.merge.tied_embeddings import embedding_for_head, is_head, untie_if_head
from evomerge.recipe import Recipe
from evomerge.vocab import plan_vocab, vocab_shape

LAYER_RE = re.compile(r"^(.*?\.layers\.)(\d+)\.(.+)$")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Src:
    """One source of a slice: model reference, layer range and its own parameters."""

    ref: str
    start: int
    end: int
    params: dict[str, Any] | None


@dataclass(frozen=True)
class TensorTask:
    name: str  # output tensor name
    inputs: tuple[tuple[str, str], ...]  # (model ref, source tensor name), the op's `tensors`
    base: tuple[str, str] | None  # the op's `base`
    params: dict[str, Any]
    op: str
    shape: tuple[int, ...]
    # a tensor indexed by token, merged into the recipe's own vocabulary: the engine realigns
    # its loaded rows with ``vocab.align`` (evomerge.vocab)
    vocab: Any = field(default=None, compare=False)


@dataclass
class MergePlan:
    recipe: Recipe
    op: OpSpec
    tasks: list[TensorTask]
    config_dict: dict[str, Any]
    num_layers: int
    tokenizer_ref: str | None
    out_dtype: torch.dtype
    refs: list[str] = field(default_factory=list)
    vocab: Any = None  # evomerge.vocab.Vocab when the recipe sets a tokenizer; else None

    @cached_property
    def config(self) -> Any:
        """The output model's transformers config (built on first use: imports transformers)."""
        from transformers import AutoConfig

        d = dict(self.config_dict)
        return AutoConfig.for_model(d.pop("model_type"), **d)


class Layout:
    """A model's tensor names split into pre-layer, per-layer (by index) and post-layer."""

    def __init__(self, names: list[str]) -> None:
        self.pre: list[str] = []
        self.post: list[str] = []
        self.layers: dict[int, list[str]] = {}
        self.prefix = "model.layers."
        for n in names:
            m = LAYER_RE.match(n)
            if m:
                self.prefix = m.group(1)
                self.layers.setdefault(int(m.group(2)), []).append(m.group(3))
            elif "embed" in n:
                self.pre.append(n)
            else:
                self.post.append(n)

    def layer_name(self, i: int, suffix: str) -> str:
        return f"{self.prefix}{i}.{suffix}"


def op_for(recipe: Recipe) -> OpSpec:
    spec = get_op(recipe.merge_method)
    # mergekit spells (multi-)SLERP over task vectors as `nuslerp`/`multislerp` + base_model.
    if spec.name in ("nuslerp", "multislerp") and recipe.base_model and f"{spec.name}_ta" in _ops():
        spec = get_op(f"{spec.name}_ta")
    return spec


def _ops() -> dict[str, OpSpec]:
    from evomerge.merge.ops import OPS

    return OPS


class Planner:
    def __init__(self, recipe: Recipe, source: Any) -> None:
        self.recipe = recipe
        self.source = source
        self.op = op_for(recipe)
        self._layouts: dict[str, Layout] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self.tasks: list[TensorTask] = []
        self.vocab: Any = None
        self.activations: dict[str, torch.Tensor] | None = None

    def layout(self, ref: str) -> Layout:
        if ref not in self._layouts:
            shared = getattr(self.source, "layout", None)  # a worker's cache keeps them
            self._layouts[ref] = shared(ref) if shared else Layout(self.source.names(ref))
        return self._layouts[ref]

    def model_config(self, ref: str) -> dict[str, Any]:
        if ref not in self._configs:
            model = getattr(self.source, "model", None)
            if model is not None:
                self._configs[ref] = model(ref).config
            else:
                from evomerge.io.folder import ModelFolder

                self._configs[ref] = ModelFolder(self.source.folder(ref)).config
        return self._configs[ref]

    def n_layers(self, ref: str) -> int:
        n = self.model_config(ref).get("num_hidden_layers")
        return int(n) if n is not None else len(self.layout(ref).layers)

    # ---- slices ---------------------------------------------------------------------------
    def groups(self) -> list[tuple[list[Src], dict[str, Any] | None]]:
        r = self.recipe
        if r.slices is not None:
            return [
                (
                    [Src(s.model, *s.layer_range, dict(s.parameters)) for s in sl.sources],
                    dict(sl.parameters),
                )
                for sl in r.slices
            ]
        srcs = [Src(m.model, 0, self.n_layers(m.model), dict(m.parameters)) for m in r.models or []]
        if r.base_model and r.base_model not in {s.ref for s in srcs}:
            srcs.append(Src(r.base_model, 0, self.n_layers(r.base_model), None))
        return [(srcs, None)]

    def build(self) -> MergePlan:
        groups = self.groups()
        refs = list(
            dict.fromkeys(
                [
                    *([self.recipe.base_model] if self.recipe.base_model else []),
                    *(s.ref for g, _ in groups for s in g),
                ]
            )
        )
        check_architectures(refs, self.model_config)
        self.vocab = plan_vocab(self.recipe, refs, self.source.folder, self.model_config)
        if self.op.needs_activations:
            self.activations = self._activations()
        for gi, (srcs, _) in enumerate(groups):
            for s in srcs:
                if s.end > self.n_layers(s.ref):
                    raise UserInputError(
                        f"slices[{gi}]: layer_range [{s.start}, {s.end}) of {s.ref} goes past its "
                        f"{self.n_layers(s.ref)} layers; shorten the range"
                    )
        self._non_layer(groups, pre=True)
        k, slots = 0, []
        for gi, (srcs, sp) in enumerate(groups):
            n = srcs[0].end - srcs[0].start
            for i in range(n):
                t = i / (n - 1) if n > 1 else 1.0
                self._layer(srcs, sp, i, k, t, f"slices[{gi}]")
                slots.append((srcs[0].ref, srcs[0].start + i))
                k += 1
        self._non_layer(groups, pre=False)
        return MergePlan(
            recipe=self.recipe,
            op=self.op,
            tasks=self.tasks,
            config_dict=self._out_config(refs[0], slots, any(is_head(t.name) for t in self.tasks)),
            num_layers=k,
            tokenizer_ref=self._tokenizer_ref(refs),
            out_dtype=TORCH_DTYPES[self.recipe.out_dtype or self.recipe.dtype],
            refs=refs,
            vocab=self.vocab,
        )

    def _layer(
        self, srcs: list[Src], sp: dict | None, i: int, k: int, t: float, where: str
    ) -> None:
        first = self.layout(srcs[0].ref)
        for suffix in first.layers.get(srcs[0].start + i, []):
            entries = [(s, self.layout(s.ref).layer_name(s.start + i, suffix)) for s in srcs]
            self._task(first.layer_name(k, suffix), entries, sp, t, where)

    def _non_layer(self, groups: list, pre: bool) -> None:
        base = self.recipe.base_model
        srcs, sp = groups[0] if pre else groups[-1]
        single = self.op.max_models == 1 and not self.op.needs_base
        names_from = base if (single and base) else srcs[0].ref
        lay = self.layout(names_from)
        names = lay.pre if pre else lay.post
        if not pre and not (single and base):
            names = names + self._heads_elsewhere(srcs, names)
        for name in names:
            if single and base:  # evomerge rule: non-layer tensors are the base model's
                self._task(name, [(Src(base, 0, 0, {"scale": 1.0}), name)], None, 0.0, "base_model")
            else:
                self._task(
                    name, [(s, name) for s in srcs], sp, 0.0, "slices[0]" if pre else "slices[-1]"
                )

    def _heads_elsewhere(self, srcs: list[Src], names: list[str]) -> list[str]:
        """LM-head tensors that another source stores when the first one is tied: mergekit
        writes an optional weight when any input holds it (see ``evomerge.merge.tied_embeddings``)."""
        extra: list[str] = []
        for s in srcs[1:]:
            extra += [n for n in self.layout(s.ref).post if is_head(n) and n not in names + extra]
        return extra

    # ---- one tensor -------------------------------------------------------------------------
    def _task(
        self, out: str, entries: list[tuple[Src, str]], sp: dict | None, t: float, where: str
    ) -> None:
        op, r = self.op, self.recipe
        entries = [(s, self._present(s.ref, n, out)) for s, n in entries]
        base = None
        if op.needs_base:
            if not r.base_model:
                raise UserInputError(
                    f"merge_method {op.name!r} needs a base_model; add base_model: <path>"
                )
            hits = [(s, n) for s, n in entries if s.ref == r.base_model]
            if not hits:
                raise UserInputError(
                    f"{where}: base_model {r.base_model} is not among the sources of tensor {out}; "
                    "add it to that slice's sources"
                )
            base = (hits[0][0].ref, hits[0][1])
            entries = [(s, n) for s, n in entries if s.ref != r.base_model]
        check_model_count(op, len(entries), where)
        params: dict[str, Any] = {}
        glob = [sp, r.parameters]
        for p in op.global_params:
            params[p] = resolve(p, glob, tensor_name=out, t=t, defaults=op.defaults, where=where)
        for p in op.per_model_params:
            params[p] = [
                resolve(
                    p,
                    [s.params, *glob],
                    tensor_name=n,
                    t=t,
                    defaults=op.defaults,
                    where=f"model {s.ref}",
                )
                for s, n in entries
            ]
        if self.activations is not None and base is not None:
            # keyed by the base's own tensor name: its layer, whatever the output position
            params["activation"] = self.activations.get(base[1])
        inputs = tuple((s.ref, n) for s, n in entries)
        pairs = ([base] if base else []) + list(inputs)
        shapes = [(ref, n, shape_of(self.source, ref, n)) for ref, n in pairs]
        shape = vocab_shape(shapes, out, self.model_config, self.vocab)
        vocab = self.vocab if shape is not None else None
        shape = shape or check_shapes(self.source, pairs, out)
        self.tasks.append(TensorTask(out, inputs, base, params, op.name, shape, vocab))

    def _activations(self) -> dict[str, torch.Tensor]:
        """The base model's activation statistics on the recipe's calibration text (AIM)."""
        from evomerge.merge.calibration import base_activations

        r = self.recipe
        if r.calibration is None or not r.base_model:
            raise UserInputError(
                f"merge_method {self.op.name!r} reads the base model's activations: give "
                "base_model and calibration: {file: <text file, one sample per line>}"
            )
        return base_activations(self.source.folder(r.base_model), r.calibration)

    def _present(self, ref: str, name: str, out: str) -> str:
        if self.source.has(ref, name):
            return name
        if is_head(name):  # a tied model's head is its embedding matrix (mergekit's tied_names)
            tied = embedding_for_head(self.layout(ref).pre)
            if tied is not None:
                return tied
        raise UserInputError(
            f"model {ref}: tensor {name} is missing (needed for output {out}); all models must "
            "share one architecture — check the path or remove this model"
        )

    def _out_config(
        self, ref: str, slots: list[tuple[str, int]], writes_head: bool
    ) -> dict[str, Any]:
        cfg = copy.deepcopy(self.model_config(ref))
        untie_if_head(cfg, writes_head)
        cfg["num_hidden_layers"] = len(slots)
        if isinstance(cfg.get("layer_types"), list):
            cfg["layer_types"] = [self._layer_type(r, i) for r, i in slots]
        if self.vocab is not None:  # (mergekit: the output tokenizer's length, padded)
            cfg["vocab_size"] = self.vocab.size
        name = self.recipe.out_dtype or self.recipe.dtype
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = name
        if "dtype" not in cfg and "torch_dtype" not in cfg:
            cfg["dtype"] = name
        return cfg

    def _layer_type(self, ref: str, i: int) -> str:
        """Each output layer keeps the attention its source layer was trained with (Gemma-3
        interleaves sliding-window and global layers: a data-flow path must not re-deal them by
        position). A source without layer_types runs full attention."""
        types = self.model_config(ref).get("layer_types")
        return types[i] if isinstance(types, list) and i < len(types) else "full_attention"

    def _tokenizer_ref(self, refs: list[str]) -> str | None:
        tc = self.recipe.tokenizer_config()
        if tc is None or tc.source in ("base", "union"):  # (a merged one is saved: plan.vocab)
            return self.recipe.base_model or refs[0]
        return tc.source


def plan(
    recipe: Recipe, *, resolver: Any = None, source: Any = None, allow_pickle: bool = False
) -> MergePlan:
    """Plan ``recipe``: output tensors, their inputs and resolved parameters, the output config.
    ``source`` is a TensorSource (e.g. a worker's ExpertCache); None reads folders from disk.
    Weight rules (varm, mwa) are first resolved to explicit weights — VaRM reads tensor data."""
    from evomerge.merge.weight_rules import resolve_weight_rules

    if source is None:
        from evomerge.io.folder import DiskSource

        source = DiskSource(resolver, allow_pickle=allow_pickle)
    return Planner(resolve_weight_rules(recipe, source), source).build()
