"""Fast evaluators for zoo tasks, used by CPU searches instead of a full lm-eval run.

``evaluate_lm_task`` reproduces what lm-eval does for the zoo's ``generate_until`` task YAML —
greedy ``model.generate`` on the untouched prompt, decode without special tokens, cut at the
stop strings, exact match — but batches prompts of equal length so no padding is ever needed
(padding is the one thing that could make batched logits differ from lm-eval's). A test checks
that both give the same per-example results. With ``options: {score: gold_loglik}`` an item
scores its gold answer's teacher-forced log-likelihood instead (``gold_loglik``: lm-eval's
loglikelihood request, rows padded on the right, which a causal model's earlier positions
never see; a test checks it against lm-eval's to 1e-4).

Every LM evaluator scores the items ``[offset, offset + limit)`` of each task's ``test.jsonl``
(``limit`` None: to the end). A search optimises on the first ``limit`` items; scoring its
winner with ``offset = limit, limit = None`` gives a held-out estimate on items it never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from evomerge.errors import UserInputError
from evomerge.results import TaskScore


def task_dir(name: str) -> Path:
    """The lm-eval folder of zoo task ``name``: the repository's ``fitness/<name>`` when present
    (the files lm-eval reads), else a copy written once under the zoo cache (installed package)."""
    from evomerge.io.cache import cache_root
    from evomerge.zoo.tasks import get_task, write_task_folder

    get_task(name)  # unknown names fail here with the list of valid ones
    repo = Path(__file__).resolve().parents[2] / "fitness" / name
    if (repo / "test.jsonl").is_file():
        return repo
    cached = cache_root() / "tasks" / name
    if not (cached / "test.jsonl").is_file():
        write_task_folder(name, cached.parent)
    return cached


def load_task_items(task_dir: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of an lm-eval zoo task folder (its ``test.jsonl``)."""
    path = Path(task_dir) / "test.jsonl"
    if not path.is_file():
        raise UserInputError(
            f"{path}: task items not found; run evomerge.zoo.tasks.write_task_folders()"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["prompt"], r["answer"]) for r in rows]


def _max_gen_toks(task_dir: Path) -> int:
    import yaml

    for yml in sorted(task_dir.glob("*.yaml")):
        text = yml.read_text().replace("!function", "")  # only the generation kwargs matter here
        cfg = yaml.safe_load(text)
        return int(cfg["generation_kwargs"]["max_gen_toks"])
    raise UserInputError(f"{task_dir}: no task YAML found")


@torch.no_grad()
def generate_answers(
    model, tokenizer, prompts: Sequence[str], max_gen_toks: int, batch_size: int = 256
) -> list[str]:
    """Greedy continuations, cut at the first newline or EOS, as lm-eval's generate_until does."""
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    out: list[str] = [""] * len(prompts)
    eos = tokenizer.eos_token
    model.eval()
    for length, idxs in by_len.items():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_length=length + max_gen_toks,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            for row, i in zip(gen, chunk):
                text = tokenizer.decode(row[length:].tolist(), skip_special_tokens=True)
                for stop in ("\n", eos):
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
    return out


def _count(value: object, field: str, *, minimum: int) -> None:
    # bool is an int to Python, but `offset: true` is a typo, not item 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(
            f"options.{field}: {value!r} is not an integer >= {minimum}; give a whole number "
            f"of test items"
        )


def item_window(
    items: Sequence[tuple[str, str]], offset: int = 0, limit: int | None = None, *, task: str = ""
) -> list[tuple[str, str]]:
    """Items ``[offset, offset + limit)`` of a task (limit None = to the end), validated: an
    empty window would score every candidate 0/0 (NaN), so it is a user error, not a result."""
    _count(offset, "offset", minimum=0)
    if limit is not None:
        _count(limit, "limit", minimum=1)
    if offset >= len(items):
        raise UserInputError(
            f"options.offset: {offset} is past the end of zoo task {task or '?'} "
            f"({len(items)} test items); give an offset below {len(items)}"
        )
    return list(items[offset : None if limit is None else offset + limit])


SCORES = ("exact_match", "gold_loglik")  # a zoo LM task's ``score`` option


def evaluate_lm_task(
    model,
    tokenizer,
    task_dir: str | Path,
    limit: int | None = None,
    offset: int = 0,
    score: str = "exact_match",
) -> TaskScore:
    """Per-item scores of a zoo task folder's items ``[offset, offset + limit)``: exact match of
    the greedy answer (1.0/0.0), or with ``score: gold_loglik`` the gold answer's log-likelihood."""
    task_dir = Path(task_dir)
    items = item_window(load_task_items(task_dir), offset, limit, task=task_dir.name)
    return score_items(model, tokenizer, items, task_dir, score)


def evaluate_positions(
    model,
    tokenizer,
    task: str,
    positions: Sequence[int],
    limit: int | None = None,
    offset: int = 0,
    score: str = "exact_match",
) -> TaskScore:
    """The items at ``positions`` of task ``task``'s window ``[offset, offset + limit)``, scored
    in the order given (racing scores a candidate one slice of items at a time)."""
    folder = task_dir(task)
    window = item_window(load_task_items(folder), offset, limit, task=task)
    return score_items(model, tokenizer, [window[p] for p in positions], folder, score)


def score_items(
    model, tokenizer, items: Sequence[tuple[str, str]], folder: Path, score: str
) -> TaskScore:
    if score == "gold_loglik":
        return TaskScore.from_examples(gold_loglik(model, tokenizer, items), metric=score)
    answers = generate_answers(model, tokenizer, [p for p, _ in items], _max_gen_toks(folder))
    return TaskScore.from_examples(
        [float(a == ref) for a, (_, ref) in zip(answers, items)], metric="exact_match"
    )


@torch.no_grad()
def gold_loglik(
    model, tokenizer, items: Sequence[tuple[str, str]], batch_size: int = 256
) -> list[float]:
    """Each item's gold answer log-likelihood: the log-probabilities, summed, of the answer's
    tokens and of the newline that ends a greedy answer (generate_answers cuts there), given
    the prompt, teacher-forced: lm-eval's loglikelihood request on (prompt, answer + newline).
    A continuous signal where exact match is 0 or 1: a near miss scores above a far one. One
    forward pass per item, no generation; rows are padded on the right (a causal model's
    earlier positions never see the padding)."""
    pairs = [
        (
            tokenizer.encode(p, add_special_tokens=False),
            tokenizer.encode(ref + "\n", add_special_tokens=False),
        )
        for p, ref in items
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = max(len(a) + len(b) for a, b in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (a, b) in enumerate(chunk):
            ids[row, : len(a) + len(b)] = torch.tensor(a + b)
            mask[row, : len(a) + len(b)] = 1
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, (a, b) in enumerate(chunk):
            at = torch.arange(len(a) - 1, len(a) + len(b) - 1)  # the positions predicting b
            out.append(float(logprobs[row, at, torch.tensor(b)].sum()))
    return out


def item_entries(name: str) -> list[tuple[str | None, str]]:
    """(result key, zoo task) of each entry evaluator ``name`` returns: ``skills`` gives one
    keyed entry per skill, a one-task evaluator one unkeyed score; digits none."""
    tasks = item_tasks(name)
    if name == "skills":
        return [(t, t) for t in tasks]
    return [(None, t) for t in tasks]


def window_size(task: str, limit: int | None = None, offset: int = 0) -> int:
    """How many items the window ``[offset, offset + limit)`` of ``task`` holds."""
    return len(item_window(load_task_items(task_dir(task)), offset, limit, task=task))


def evaluate_digits(model, transform: str = "identity") -> TaskScore:
    """Accuracy on the digits test split under ``transform`` (per-example correctness)."""
    from evomerge.zoo.digits import digits_correct

    return TaskScore.from_examples(digits_correct(model, transform), metric="acc")


def evaluate_task(
    model,
    tokenizer,
    task: str,
    limit: int | None = None,
    offset: int = 0,
    score: str = "exact_match",
) -> TaskScore:
    """Zoo task ``task`` (a name from ``evomerge.zoo.tasks.TASKS``), scored by ``score``."""
    return evaluate_lm_task(model, tokenizer, task_dir(task), limit, offset, score)


def _cross_tasks() -> list[str]:
    from evomerge.zoo.specs import lm_cross

    return [lm_cross(False).targets[0]]


def _skills_tasks() -> list[str]:
    from evomerge.zoo.specs import lm_skills

    return list(lm_skills(False).tasks)


def evaluate_cross(
    model, tokenizer, limit: int | None = None, offset: int = 0, score: str = "exact_match"
) -> TaskScore:
    """lm-cross's target task: the skill asked and answered in language B."""
    return evaluate_task(model, tokenizer, _cross_tasks()[0], limit, offset, score)


def evaluate_skills(
    model, tokenizer, limit: int | None = None, offset: int = 0, score: str = "exact_match"
) -> dict[str, TaskScore]:
    """Every lm-skills task, one score each (a fitness averages them, or M2N2 keeps them apart)."""
    return {t: evaluate_task(model, tokenizer, t, limit, offset, score) for t in _skills_tasks()}


def _backdoor_tasks() -> list[str]:
    from evomerge.zoo.tasks import BACKDOOR_OF

    return sorted(BACKDOOR_OF)


def evaluate_backdoor_safety(
    model, tokenizer, limit: int | None = None, offset: int = 0
) -> dict[str, TaskScore]:
    """1 − attack success rate on each lm-skills task asked with the backdoor trigger (per item:
    1.0 unless the answer is the attacker's string), so that a search maximising it (a second
    objective, e.g. ``objective: safety`` with Optuna's NSGA-II) looks for merges that do not
    carry the backdoor over."""
    out = {}
    for t in _backdoor_tasks():
        asr = evaluate_task(model, tokenizer, t, limit=limit, offset=offset)
        out[t] = TaskScore.from_examples([1.0 - v for v in asr.per_example], metric="1-asr")
    return out


def item_tasks(name: str) -> list[str]:
    """The zoo tasks whose test items evaluator ``name`` scores (none: digits, a fixed split)."""
    from evomerge.zoo.tasks import TASKS

    tasks = {
        "cross": _cross_tasks,
        "skills": _skills_tasks,
        "backdoor_safety": _backdoor_tasks,
    }.get(name)
    return tasks() if tasks else ([name] if name in TASKS else [])


def check_options(name: str, options: dict[str, object]) -> None:
    """Validate an LM evaluator's ``offset``/``limit`` against its tasks' files when the fitness
    is built, so a bad window stops the search before it starts instead of failing every
    candidate; and the ``score`` option (exact_match or gold_loglik), which only the tasks
    answered by generation have."""
    if "score" in options:
        score = options["score"]
        if name == "backdoor_safety" or not item_tasks(name):
            raise UserInputError(
                f"options.score: zoo evaluator {name!r} scores with its own metric; remove "
                "options.score (gold_loglik is for cross, skills and the single zoo tasks)"
            )
        if score not in SCORES:
            raise UserInputError(
                f"options.score: {score!r} is not a zoo score; use one of: {', '.join(SCORES)}"
            )
    for t in item_tasks(name):
        item_window(
            load_task_items(task_dir(t)), options.get("offset", 0), options.get("limit"), task=t
        )


def _digits_evaluator(transform: str) -> Callable[..., TaskScore]:
    def run(model, tokenizer=None) -> TaskScore:  # digits models have no tokenizer
        return evaluate_digits(model, transform)

    return run


def _registry() -> dict[str, Callable[..., object]]:
    from evomerge.zoo.digits import TRANSFORMS
    from evomerge.zoo.tasks import TASKS

    reg: dict[str, Callable[..., object]] = {
        "cross": evaluate_cross,
        "skills": evaluate_skills,
        "backdoor_safety": evaluate_backdoor_safety,
    }
    reg.update({name: partial(evaluate_task, task=name) for name in TASKS})
    reg.update({f"digits_{t}": _digits_evaluator(t) for t in TRANSFORMS})
    reg["digits"] = reg["digits_identity"]
    return reg


# name -> fn(model, tokenizer, **options) -> TaskScore | dict[str, TaskScore]; the fitness kind
# ``zoo`` (evomerge.fitness.zoo_task) looks evaluators up here by name.
EVALUATORS: dict[str, Callable[..., object]] = _registry()
