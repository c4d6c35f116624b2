"""ExpertCache and Materializer: candidates materialized in place into one resident model.

mergekit-evolve writes every candidate to disk and loads it back; that costs a full write and
read of the model per candidate. Here a worker loads the experts' tensors once (``ExpertCache``,
which also caches task vectors theta_i - theta_base the first time an operator asks for them)
and keeps ONE model resident. A candidate is merged by the engine (``evomerge.merge.engine``: the same
planning and operator code as ``evomerge merge``) reading from the cache instead of the disk,
and each merged tensor is copied into the existing parameter (``param.copy_``): no
``load_state_dict``, no new model, no disk write. Same recipe => same bits as ``evomerge merge``.

Data-flow candidates change the depth: the resident model keeps a pool of decoder layers and
resizes its layer list in place (re-indexing ``layer_idx`` for the KV cache); any other change of
architecture rebuilds it (once, weights uninitialized, then overwritten).

The cache also holds a bounded ``ResidentCache`` (``resident_cache.py``) of what a merge needs
that does not depend on the candidate (sorted |τ| for top-k, DARE/DELLA uniform draws): ~1× the
experts' float32 bytes at most by default (``stats_ratio``), ``stats=False`` turns it off. The
engine's operators write straight into the resident parameters where they can (``out=``).

A candidate already resident is not merged again (racing scores one candidate a slice at a
time, each slice a job): ``materialize(recipe, key=...)`` returns the model as it is when the
last merge was of the same key and nothing has written into the model since (see
``_stamp``). The key is the recipe's digest: it covers everything that changes a merged byte
(models, parameters, ``dtype``, ``seed`` of the stochastic operators); the experts, the
resident dtype and placement are fixed for a materializer's life.

``write_model(recipe, out_dir)`` is the disk path (the archive, exports): the engine's run_merge.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Resolver = Callable[[str], str]


def _identity(ref: str) -> str:
    return ref


class ExpertCache:
    """Every tensor of every source model, loaded once (float32 by default) and kept in memory,
    plus task vectors cached on first use. Keys are the model references as recipes write them
    (paths or ``recipe:<digest>``), resolved to folders by ``resolver``.

    ``stats``: keep a ``ResidentCache`` of candidate-independent merge inputs, bounded by
    ``stats_ratio`` × the bytes of the loaded models (None: unbounded)."""

    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        stats: bool = True,
        stats_ratio: float | None = 1.0,
    ) -> None:
        from evomerge.merge.ops._fast.resident_cache import ResidentCache

        self.resolver = resolver or _identity
        self.dtype = dtype
        self.device = device
        self._models: dict[str, dict[str, torch.Tensor]] = {}
        self._deltas: dict[tuple[str, str, str], torch.Tensor] = {}
        self._folders: dict[str, Any] = {}
        self._nbytes = 0
        self._layouts: dict[str, Any] = {}
        self._real: dict[str, str] = {}  # a loaded folder's real path -> its first reference
        budget = None if stats_ratio is None else (lambda: int(stats_ratio * self.nbytes))
        self.stats = ResidentCache(budget) if stats else None

    def folder(self, ref: str) -> Path:
        return Path(self.resolver(ref))

    def model(self, ref: str) -> Any:
        """The model's folder (its config.json read once, for every candidate's plan)."""
        if ref not in self._folders:
            from evomerge.io.adapter_folder import open_model_folder

            self._folders[ref] = open_model_folder(self.folder(ref))  # (or a LoRA adapter's)
        return self._folders[ref]

    def layout(self, ref: str) -> Any:
        """The model's tensor names split by layer (``merge.plan.Layout``), built once."""
        if ref not in self._layouts:
            from evomerge.merge.plan import Layout

            self._layouts[ref] = Layout(self.names(ref))
        return self._layouts[ref]

    def tensors(self, ref: str) -> dict[str, torch.Tensor]:
        if ref not in self._models:
            from evomerge.io.adapter_folder import AdapterFolder

            folder = self.model(ref)
            if isinstance(folder, AdapterFolder):
                self._add(ref, self._adapted(folder), only=folder.adapter.targets)
            else:
                real = os.path.realpath(self.folder(ref))
                same = self._real.get(real)  # e.g. loaded already as a LoRA adapter's base
                if same is not None:
                    self._models[ref] = self._models[same]
                else:
                    self._add(ref, self._load(self.folder(ref)))
                    self._real[real] = ref
        return self._models[ref]

    def _remember(self, ref: str) -> None:
        """Note the folder of a model added from elsewhere (e.g. Ray's object store), so that a
        LoRA adapter over it finds its tensors instead of reading the base again."""
        try:
            self._real.setdefault(os.path.realpath(self.folder(ref)), ref)
        except Exception:  # noqa: BLE001 - a reference this node cannot resolve is not a base
            pass

    def _adapted(self, folder: Any) -> dict[str, torch.Tensor]:
        """A LoRA adapter's applied weights, computed once: its base's tensors (shared with the
        base's own entry) with each targeted one replaced by W + s·B·A (``evomerge.io.lora``)."""
        from evomerge.merge.checks import check_finite

        adapter = folder.adapter
        base = self.tensors(str(adapter.base))
        adapter.check_base({n: tuple(t.shape) for n, t in base.items()})
        out = dict(base)
        for name in adapter.targets:
            value = adapter.apply(name, base[name].cpu())
            check_finite(value, str(adapter.file), name)
            out[name] = value.to(device=self.device, dtype=self.dtype)
        return out

    def _add(self, ref: str, tensors: dict[str, torch.Tensor], only: Any = None) -> None:
        """``only``: the names whose tensors are new (the others are shared, counted once)."""
        self._models[ref] = tensors
        names = tensors if only is None else only
        self._nbytes += sum(tensors[n].numel() * tensors[n].element_size() for n in names)

    def tensor(self, ref: str, name: str) -> torch.Tensor:
        tensors = self.tensors(ref)
        if name not in tensors:
            raise KeyError(f"{ref}: no tensor {name!r}")
        return tensors[name]

    def has(self, ref: str, name: str) -> bool:
        return name in self.tensors(ref)

    def names(self, ref: str) -> list[str]:
        return list(self.tensors(ref))

    def task_vector(self, ref: str, base: str, name: str) -> torch.Tensor:
        key = (ref, base, name)
        if key not in self._deltas:
            self._deltas[key] = self.tensor(ref, name) - self.tensor(base, name)
        return self._deltas[key]

    @property
    def nbytes(self) -> int:
        """Bytes of the loaded models (the ResidentCache's budget asks for it at every entry
        it admits: kept up to date as models load rather than summed each time)."""
        return self._nbytes

    def _load(self, folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            from evomerge.errors import UserInputError

            raise UserInputError(f"{folder}: no .safetensors weights (pickle .bin is refused)")
        from evomerge.merge.checks import check_finite

        out: dict[str, torch.Tensor] = {}
        for f in files:
            for name, t in load_file(str(folder / f), device=self.device).items():
                check_finite(t, str(folder), name)  # once per worker, not once per candidate
                out[name] = t.to(self.dtype) if t.is_floating_point() else t
        return out


MergeFn = Callable[[Any, ExpertCache], tuple[Any, Any]]


class MergeTally:
    """Merges done and merges skipped (candidate already resident), over every materializer of
    this process: what tests and benchmarks count (a merge is seconds on a real model)."""

    def __init__(self) -> None:
        self.merges = 0
        self.reused = 0


TALLY = MergeTally()


class Materializer:
    """``merge_fn(recipe, cache) -> (output config, iterable of (name, tensor))``; default: the
    engine (``engine_bridge.merged_tensors``)."""

    # False merges every candidate even when it is resident (to compare, in tests)
    reuse_resident = True

    def __init__(
        self, cache: ExpertCache, *, device: str = "cpu", merge_fn: MergeFn | None = None
    ) -> None:
        self.cache = cache
        self.device = device
        self.merge_fn = merge_fn
        self.model: Any = None
        self._arch: str | None = None
        self._config: Any = None  # the config whose architecture key is self._arch
        self._layer_pool: list[Any] = []
        self._targets: dict[str, torch.Tensor] = {}
        self._required: list[str] = []
        self._holds: Any = None  # key of the candidate whose weights the model holds, or None
        self._holds_stamp: Any = None  # _stamp() right after that merge

    # ---- the per-candidate path ----------------------------------------------------------------
    @torch.no_grad()
    def materialize(self, recipe: Any, key: Any = None) -> Any:
        """The resident model holding ``recipe``'s merge. With ``key`` (what identifies the
        merged bytes, e.g. the recipe's digest): no merge when the model already holds it."""
        if key is not None and self.holds(key):
            TALLY.reused += 1
            return self.model
        self.forget()  # from here until the merge completes the model holds no candidate
        model = self._merge(recipe)
        TALLY.merges += 1
        if key is not None and self.reuse_resident:
            self._holds, self._holds_stamp = key, self._stamp()
        return model

    def holds(self, key: Any) -> bool:
        """The model holds the merge of ``key``, untouched since (no in-place write into a
        parameter or buffer, no parameter replaced, no rebuild or resize)."""
        return (
            self.reuse_resident
            and self.model is not None
            and self._holds == key
            and self._holds_stamp == self._stamp()
        )

    def forget(self) -> None:
        """Whatever the model holds is no longer a known candidate (call it after writing into
        the resident model by other means than ``materialize``)."""
        self._holds = self._holds_stamp = None

    def _stamp(self) -> tuple:
        """Each target's storage and version counter: torch bumps a tensor's ``_version`` on
        every in-place write (``copy_``, ``add_``, an optimizer step, ``load_state_dict``), and
        ``model.to`` or a rebuild changes the storage. (A write through ``.data`` escapes the
        version counter: code that does so must call ``forget``.)"""
        return tuple((t.data_ptr(), t._version) for t in self._targets.values())

    def _merge(self, recipe: Any) -> Any:
        merge_fn = self.merge_fn
        if merge_fn is None:
            from evomerge.workers.engine_bridge import merged_tensors

            # the engine writes into the resident parameters where its operator can
            config, tensors = merged_tensors(recipe, self.cache, lambda n: self._targets.get(n))
        else:
            config, tensors = merge_fn(recipe, self.cache)
        model = self._resident(config)
        written = set()
        try:
            for name, value in tensors:
                dst = self._targets.get(name)
                if dst is None:
                    continue  # e.g. lm_head.weight when tied; rotary caches are not parameters
                if dst.shape != value.shape:
                    raise ValueError(
                        f"merged tensor {name}: shape {tuple(value.shape)} does not fit "
                        f"the model's {tuple(dst.shape)}"
                    )
                if not _same_storage(dst, value):
                    dst.copy_(value)
                written.add(name)
        finally:  # the engine finishes writing the parameters (merged_tensors) even on error
            getattr(tensors, "close", lambda: None)()
        missing = [n for n in self._required if n not in written]
        if missing:
            raise ValueError(
                f"the merge produced no value for {missing[:5]} "
                f"({len(missing)} tensors); the resident model is incomplete"
            )
        return model

    def release(self) -> None:
        self.forget()
        self.model, self._arch, self._layer_pool, self._targets = None, None, [], {}
        self._config = None

    # ---- the resident model ---------------------------------------------------------------------
    def _resident(self, config: Any) -> Any:
        # the engine hands equal configs over as one object (engine_bridge): no re-serializing
        arch = self._arch if config is self._config else _arch_key(config)
        self._config = config
        if self.model is not None and arch == self._arch:
            if _num_layers(config) != len(_decoder_layers(self.model)):
                self._resize(_num_layers(config), config)
            _apply_layer_types(self.model, config)
            return self.model
        self._build(config)
        self._arch = arch
        return self.model

    def _build(self, config: Any) -> None:
        from transformers import AutoModelForCausalLM

        self.forget()
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # older transformers
            from transformers.modeling_utils import no_init_weights
        with no_init_weights():  # (a copy: the model keeps and changes its config)
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)
        # transformers (5.x) ties the head to the embedding while initializing weights, which
        # no_init_weights skips: without this a tied model's head would be a second, unwritten
        # matrix instead of the merged embedding.
        model.tie_weights()
        model.to(self.device).eval()
        model.requires_grad_(False)
        self.model = model
        self._layer_pool = list(_decoder_layers(model))
        self._index_targets()

    def _resize(self, n: int, config: Any) -> None:
        """Grow or shrink the decoder stack in place, keeping every built layer for reuse."""
        self.forget()
        model = self.model
        if isinstance(getattr(config, "layer_types", None), list):
            # a layer reads its attention kind from config.layer_types[layer_idx] when built
            model.config.layer_types = list(config.layer_types)
        while len(self._layer_pool) < n:
            cls = type(self._layer_pool[0])
            layer = cls(model.config, layer_idx=len(self._layer_pool)).to(self.device).eval()
            layer.requires_grad_(False)
            self._layer_pool.append(layer)
        layers = self._layer_pool[:n]
        for i, layer in enumerate(layers):
            attn = getattr(layer, "self_attn", None)
            if attn is not None and hasattr(attn, "layer_idx"):
                attn.layer_idx = i  # the KV cache is indexed by position in the stack
        _set_decoder_layers(model, torch.nn.ModuleList(layers))
        model.config.num_hidden_layers = n
        self._index_targets()

    def _index_targets(self) -> None:
        model = self.model
        # A tied alias (lm_head.weight) is no target: the merge writes the embedding, and the
        # plan writes no head for a tied config (evomerge.merge.tied_embeddings).
        tied = _tied_names(model)
        params = model.named_parameters(remove_duplicate=False)
        self._targets = {n: p for n, p in params if n not in tied}
        persistent = {n for n, _ in model.named_buffers()} - _non_persistent(model)
        self._targets.update({n: b for n, b in model.named_buffers() if n in persistent})
        self._required = list(self._targets)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``b`` is ``a`` itself (or the same view of it): already written in place."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.dtype == b.dtype


def _decoder_layers(model: Any) -> torch.nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.layers decoder stack to resize")
    return layers


def _apply_layer_types(model: Any, config: Any) -> None:
    """Give each resident layer the attention kind the plan chose for its slot (the source
    layer's, merge.plan._layer_type): a pooled layer built for one slot may serve another, and
    Gemma-3's layers fix sliding vs global attention (window, rotary base, mask) per layer."""
    types = getattr(config, "layer_types", None)
    if not isinstance(types, list) or not types:
        return
    model.config.layer_types = list(types)
    _cover_rotary_kinds(model, set(types))
    window = getattr(config, "sliding_window", None)
    for layer, kind in zip(_decoder_layers(model), types, strict=False):
        if hasattr(layer, "attention_type"):
            layer.attention_type = kind
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            continue
        if hasattr(attn, "layer_type"):
            attn.layer_type = kind
        if hasattr(attn, "is_sliding"):
            attn.is_sliding = kind == "sliding_attention"
        if hasattr(attn, "sliding_window"):
            attn.sliding_window = window if kind == "sliding_attention" else None


def _cover_rotary_kinds(model: Any, kinds: set[str]) -> None:
    """Gemma-3's rotary embedding holds one frequency table per attention kind present when it
    was built; a path that brings a kind the resident model has not seen needs a new one."""
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    have = getattr(rotary, "layer_types", None)
    if have is None or kinds <= set(have):
        return
    device = next(model.parameters()).device
    inner.rotary_emb = type(rotary)(config=model.config, device=device)


def _set_decoder_layers(model: Any, layers: torch.nn.ModuleList) -> None:
    model.model.layers = layers


def _num_layers(config: Any) -> int:
    return int(config.num_hidden_layers)


def _arch_key(config: Any) -> str:
    """The config without its depth: equal keys mean 'same model up to the layer count'."""
    d = config.to_dict()
    for k in (
        "num_hidden_layers",
        "layer_types",
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "architectures",
    ):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)


def _non_persistent(model: Any) -> set[str]:
    out = set()
    for mod_name, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            out.add(f"{mod_name}.{b}" if mod_name else b)
    return out


def _tied_names(model: Any) -> set[str]:
    """Parameter names that share storage with an earlier one (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for n, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen:
            tied.add(n)
        else:
            seen[key] = n
    return tied


def write_model(recipe: Any, out_dir: str | Path, resolver: Resolver | None = None) -> Path:
    """Materialize ``recipe`` as a HF model folder (the archive and export path)."""
    from evomerge.workers import engine_bridge

    return engine_bridge.write_model(recipe, Path(out_dir), resolver or _identity)
