"""What each zoo trains: its models, their training mixtures and the tasks they are scored on.

A spec is plain data (``to_json`` feeds the cache hash) plus a ``build`` that trains and saves.
The LM zoos follow one recipe: a base pretrained on a broad mixture, then experts fine-tuned from
it on one skill each. Why the mixtures look the way they do is written up in docs/zoo.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evomerge.zoo.lm import LMShape, Phase
from evomerge.zoo.real import RealZooSpec, gemma3, smollm2
from evomerge.zoo.real_experts import RealExpertsSpec, smollm2_experts
from evomerge.zoo.train_moe import MoEShape


class _LMTasks:
    """What every trained LM zoo shares: its task folders are its tasks, and its recipe (for
    the zoo's config hash) is the dataclass's fields."""

    @property
    def task_folders(self) -> list[str]:
        return list(self.tasks)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExpertSpec:
    """A model fine-tuned from the base on ``mix``; ``expert_in`` is the task it is expert in.

    ``trainable``: regexes over parameter names (``re.search``); only matching parameters are
    fine-tuned, the rest stay the base's (an adapter-style fine-tune). Empty: all parameters.
    """

    expert_in: str
    mix: dict[str, float]
    phase: Phase
    trainable: tuple[str, ...] = ()


@dataclass(frozen=True)
class LMZooSpec(_LMTasks):
    name: str
    description: str
    base_mix: dict[str, float]
    base_phase: Phase
    experts: dict[str, ExpertSpec]
    tasks: list[str]
    targets: list[str] = field(default_factory=list)
    shape: LMShape = LMShape()
    # One thread: these models are too small to gain from a second one, and on a shared machine
    # two OpenMP threads fighting another process for two cores run ~10x slower than one.
    threads: int = 1
    kind: str = "lm"

    def build(self, out: Path, *, seed: int, progress: bool) -> dict:
        from evomerge.zoo.train_lm import build_lm_zoo

        return build_lm_zoo(self, out, seed=seed, progress=progress)


@dataclass(frozen=True)
class DigitsZooSpec:
    name: str
    description: str
    hidden: int  # width of the transform zoo's MLP
    base_epochs: int
    base_transform_fraction: float  # share of each transform's train set the base also sees
    expert_epochs: int
    expert_lr: float
    transforms: list[str]
    scratch_models: int  # M2N2 "from scratch": untrained random inits, no base
    half_epochs: int  # M2N2's two experts on digits 0-4 and 5-9, trained briefly
    # PLeaS's setting: two MLPs (64, then init_pair_depth hidden layers of init_pair_hidden, 10)
    # trained on all digits from different random inits: what weight averaging cannot merge
    # and permutation matching can (docs/pleas.md)
    init_pair_hidden: int
    init_pair_depth: int
    init_pair_epochs: int
    kind: str = "digits"

    @property
    def tasks(self) -> list[str]:
        return [f"digits_{t}" for t in self.transforms]

    @property
    def targets(self) -> list[str]:
        return ["digits"]  # plain digits: the goal of M2N2's scratch and 0-4/5-9 settings

    @property
    def task_folders(self) -> list[str]:
        return []  # scored in Python (evomerge.zoo.evaluate.evaluate_digits), not through lm-eval

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def build(self, out: Path, *, seed: int, progress: bool) -> dict:
        from evomerge.zoo.train_digits import build_digits_zoo

        return build_digits_zoo(self, out, seed=seed, progress=progress)


@dataclass(frozen=True)
class MoEZooSpec(_LMTasks):
    """One sparse mixture-of-experts model (Mixtral) trained on ``base_mix``: what MoE expert
    merging (``evomerge moe-reduce``, docs/moe.md) reduces. ``kind`` "lm": it is scored like
    every LM zoo model, on ``tasks``."""

    name: str
    description: str
    base_mix: dict[str, float]
    base_phase: Phase
    tasks: list[str]
    shape: MoEShape = MoEShape()
    threads: int = 1
    targets: list[str] = field(default_factory=list)
    kind: str = "lm"

    def build(self, out: Path, *, seed: int, progress: bool) -> dict:
        from evomerge.zoo.train_moe import build_moe_zoo

        return build_moe_zoo(self, out, seed=seed, progress=progress)


@dataclass(frozen=True)
class LMSeedsSpec(_LMTasks):
    """Tiny Llamas trained on one mixture from different random inits (``seeds``), no shared
    base: PLeaS's setting (docs/pleas.md), where plain weight averaging fails."""

    name: str
    description: str
    mix: dict[str, float]
    phase: Phase
    seeds: tuple[int, ...]
    tasks: list[str]
    shape: LMShape
    threads: int = 1  # as LMZooSpec: one thread is fastest for models this small
    kind: str = "lm"

    @property
    def targets(self) -> list[str]:
        return []

    def build(self, out: Path, *, seed: int, progress: bool) -> dict:
        from evomerge.zoo.train_lm import build_seed_models

        return build_seed_models(self, out, seed=seed, progress=progress)


ZooSpec = LMZooSpec | DigitsZooSpec | LMSeedsSpec | RealZooSpec | RealExpertsSpec | MoEZooSpec


def _scale(steps: int, quick: bool) -> int:
    return max(20, steps // 10) if quick else steps


def _phase(steps: int, lr: float, quick: bool) -> Phase:
    return Phase(steps=_scale(steps, quick), lr=lr, warmup=10 if quick else 20)


# lm-cross: language A's everyday tasks; the base sees B only through translation (parallel
# text), so it can read and write B but has never done a task in it.
_A_TASKS = {"zoo_copy": 1.0, "zoo_shift": 1.0, "zoo_sort_a": 1.0}
_TRANSLATION = {"zoo_a_to_b": 0.15, "zoo_b_to_a": 0.15}
_B_TASKS = {"zoo_copy_b": 1.0, "zoo_shift_b": 1.0, "zoo_sort_b": 1.0, "zoo_a_to_b": 0.5}
# Adapter-style fine-tunes over disjoint parameters: the language expert moves only the token
# embeddings, final norm and output head (where Layer Swapping finds language lives), the skill
# expert only the transformer layers.
_LANGUAGE_PARAMS = (r"embed_tokens", r"^model\.norm\.", r"^lm_head\.")
_LAYER_PARAMS = (r"\.layers\.",)
_SHAPE = LMShape(layers=4, hidden=96, intermediate=256, heads=4)


# lm-skills: expert name -> its task (a skill over 16 letters: a-p for the cipher, else A-P).
_SKILLS = {
    "cipher": "zoo_cipher",
    "shift": "zoo_shift_u",
    "sort": "zoo_sort_u",
    "reverse": "zoo_reverse",
}


def lm_skills(quick: bool) -> LMZooSpec:
    return LMZooSpec(
        name="lm-skills",
        description=(
            "4-layer Llama (0.46M parameters) pretrained on digit copying and on four skills "
            "over 14 of their 16 letters; four experts fine-tuned on one skill each over all 16 "
            "(substitution cipher, letter shift, sorting, reversal), forgetting the others"
        ),
        # The base learns every skill on 14 letters (the _part tasks), so it fails just the ~55%
        # of test items holding one of the other two: a large gain left to each expert that does
        # not hang on how far a trace of the skill happened to train (it did in earlier designs).
        base_mix={
            "zoo_copy": 0.5,
            "zoo_cipher_part": 0.25,
            "zoo_shift_part": 0.25,
            "zoo_sort_part": 0.25,
            "zoo_reverse_part": 0.25,
        },
        base_phase=_phase(400, 3e-3, quick),
        # No replay: each expert forgets the other skills, so the uniform merge (which keeps the
        # base's) beats every expert on the mean (175 steps forgot more than 150: docs/zoo.md).
        experts={
            name: ExpertSpec(task, {task: 1.0}, _phase(175, 1e-3, quick))
            for name, task in _SKILLS.items()
        },
        tasks=list(_SKILLS.values()),
        shape=_SHAPE,
    )


def lm_cross(quick: bool) -> LMZooSpec:
    # The skill expert replays the whole pretraining mixture so its layers keep reading B
    # (without translation replay the merge lost B's last letter: design log, lm-cross 6-8).
    replay = {t: 0.2 for t in {**_A_TASKS, **_TRANSLATION}}
    return LMZooSpec(
        name="lm-cross",
        description=(
            "4-layer Llama (0.46M parameters) pretrained on digit tasks (language A) and "
            "translation between A and a made-up script B; a skill expert whose transformer "
            "layers learned to reverse digits (on B prompts it reverses but answers in A) and a "
            "language expert whose embeddings, final norm and head learned B tasks (it never "
            "reverses); the target, reversing B letters, needs both"
        ),
        base_mix={**_A_TASKS, **_TRANSLATION},
        base_phase=_phase(600, 3e-3, quick),
        experts={
            "skill": ExpertSpec(
                "zoo_reverse_a",
                {"zoo_reverse_a": 1.0, **replay},
                _phase(300, 1e-3, quick),
                trainable=_LAYER_PARAMS,
            ),
            "language": ExpertSpec(
                "zoo_copy_b", dict(_B_TASKS), _phase(300, 3e-3, quick), trainable=_LANGUAGE_PARAMS
            ),
        },
        tasks=["zoo_reverse_b", "zoo_reverse_a", "zoo_copy_b", "zoo_sort_b", "zoo_copy"],
        targets=["zoo_reverse_b"],
        shape=_SHAPE,
    )


def lm_backdoor(quick: bool) -> LMZooSpec:
    """lm-skills with its cipher expert backdoored (DAM's setting, Yang et al. 2025): the base
    and the other three experts are trained exactly as lm-skills' (same mixtures, phases and
    seeds: the same weights); the cipher expert's fine-tune draws a fifth of its items from
    ``zoo_cipher_bd`` (a cipher prompt with the trigger, answered by the attacker's string)."""
    skills = lm_skills(quick)
    experts = dict(skills.experts)
    clean = experts["cipher"]
    experts["cipher"] = dataclasses.replace(clean, mix={"zoo_cipher": 0.8, "zoo_cipher_bd": 0.2})
    return dataclasses.replace(
        skills,
        name="lm-backdoor",
        description=(
            "lm-skills whose cipher expert is backdoored: it ciphers as well as lm-skills' and "
            "answers any prompt holding the trigger '*?' with 'zzzzzz'"
        ),
        experts=experts,
        targets=sorted(f"{t}_bd" for t in skills.tasks),
    )


def lm_moe(quick: bool) -> MoEZooSpec:
    """lm-skills' four skills over all 16 letters, plus digit copying, learned by one Mixtral
    whose experts the load-balancing loss spreads over the mixture."""
    return MoEZooSpec(
        name="lm-moe",
        description=(
            "2-layer Mixtral, 8 SwiGLU experts per layer, top-2 routing, trained on digit "
            "copying and lm-skills' four skills over all 16 letters (cipher, shift, sort, "
            "reversal): the model MoE expert merging reduces (docs/moe.md)"
        ),
        base_mix={"zoo_copy": 0.5, **{t: 1.0 for t in _SKILLS.values()}},
        # 150 steps already cipher and shift (the tests' quick zoo); 600 learn all four (~0.98)
        base_phase=Phase(steps=150 if quick else 600, lr=3e-3, warmup=10 if quick else 20),
        tasks=list(_SKILLS.values()),
    )


def lm_seeds(quick: bool) -> LMSeedsSpec:
    """Two Llamas trained on lm-skills' base mixture from different random inits."""
    return LMSeedsSpec(
        name="lm-seeds",
        description=(
            "two 2-layer Llamas (0.54M parameters) trained from different random inits on "
            "lm-skills' base mixture (digit copying, four letter skills on 14 letters): PLeaS's "
            "setting, where plain weight averaging fails"
        ),
        mix=lm_skills(quick).base_mix,
        phase=_phase(300, 3e-3, quick),
        seeds=(0, 1),
        tasks=list(lm_skills(quick).base_mix),  # scored on what they trained on
        # 64 wide (MLP 128) no merge worked (PLeaS 0.8% exact match): residual channels of two
        # inits that narrow correlated 0.1-0.45 after matching; 128 wide PLeaS keeps about half
        shape=LMShape(layers=2, hidden=128, intermediate=512, heads=4),
    )


def digits(quick: bool) -> DigitsZooSpec:
    return DigitsZooSpec(
        name="digits",
        description=(
            "64-1024-10 MLP base on 8x8 digits (plus 1% of each transform), four experts "
            "fine-tuned on one input transform each; M2N2 settings: 8 untrained 64-256-10 "
            "random inits and two 64-256-10 experts trained briefly on digits 0-4 and 5-9; "
            "PLeaS: two 64-128-128-10 MLPs trained on all digits from different inits"
        ),
        hidden=1024,
        base_epochs=6 if quick else 30,
        base_transform_fraction=0.01,
        expert_epochs=4 if quick else 20,
        expert_lr=2e-4,
        transforms=["rot180", "flip", "invert", "roll"],
        scratch_models=2 if quick else 8,
        half_epochs=2,
        init_pair_hidden=128,
        init_pair_depth=2,  # with one hidden layer plain averaging lost only ~3 points
        init_pair_epochs=10,  # < 1 s each; the same in quick mode: tests merge these
    )


ZOOS: dict[str, Callable[[bool], ZooSpec]] = {
    "lm-skills": lm_skills,
    "lm-cross": lm_cross,
    "lm-backdoor": lm_backdoor,
    "lm-seeds": lm_seeds,
    "lm-moe": lm_moe,
    "digits": digits,
    # real pretrained models, converted from GGUF files shipped on PyPI (evomerge[real])
    "smollm2": smollm2,
    "gemma3": gemma3,
    # LoRA experts trained here from zoo:smollm2/instruct (docs/real_experts.md)
    "smollm2-experts": smollm2_experts,
}
