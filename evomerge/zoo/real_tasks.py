"""The tasks of the smollm2-experts zoo: a digit skill, a made-up number language, and the two
combined (the skill asked and answered in that language), as chat-template lm-eval folders.

The design transfers Sakana's setting (a language model and a math model merged into one that
does math asked in that language) and the toy lm-cross zoo's to SmolLM2-135M-Instruct:

* ``real_shift`` (the skill, in digits): "Shift each digit of 4721 up by one." -> "5832"
  (each digit plus one, 9 wrapping to 0). The instruct model cannot do it reliably.
* ``real_zel`` (the language): Zel writes each digit as a syllable (0 ka, 1 lo, ... 9 ba; each
  one token of SmolLM2's tokenizer), e.g. 472 -> "pe tu mi". The item asks to write a number
  in Zel; the language expert also learns to read and repeat Zel numbers.
* ``real_target``: "In Zel: shift each digit of pe tu mi lo up by one." -> "so vi nu mi". It
  needs the skill and the language; no expert is trained on it.

Every item is drawn from a seeded ``random.Random``, so the folders and the training data are
the same on every machine. Each folder's ``test.jsonl`` holds the scored items: the search takes
the first ones (``limit``) and ``fitness.validation`` the next ones, disjoint by position and
unique by question; ``train.jsonl`` holds the few-shot examples. Training never draws a
question that is in any folder (``held_out``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

ZEL = ("ka", "lo", "mi", "nu", "pe", "so", "tu", "vi", "ze", "ba")  # digit d -> ZEL[d]
SYSTEM = "Answer briefly."  # the system turn of every prompt, in training and in the folders
N_TEST = 160  # scored items per folder: 40 search + 40 validation in the experiments, 80 spare
N_SHOTS = 4  # few-shot examples per folder (train.jsonl)
SHIFT_DIGITS = 4

Item = tuple[str, str]


def to_zel(digits: str) -> str:
    return " ".join(ZEL[int(c)] for c in digits)


def shifted(digits: str) -> str:
    return "".join(str((int(c) + 1) % 10) for c in digits)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _number(rng: random.Random) -> str:
    return str(rng.randint(10, 999))


def shift_item(rng: random.Random) -> Item:
    x = _digits(rng, SHIFT_DIGITS)
    return f"Shift each digit of {x} up by one.", shifted(x)


def target_item(rng: random.Random) -> Item:
    x = _digits(rng, SHIFT_DIGITS)
    return f"In Zel: shift each digit of {to_zel(x)} up by one.", to_zel(shifted(x))


def zel_write_item(rng: random.Random) -> Item:
    n = _number(rng)
    return f"Write {n} in Zel.", to_zel(n)


def zel_digit_item(rng: random.Random) -> Item:
    d = str(rng.randint(0, 9))  # one digit: the bare word list (test items have 2-3 digits)
    return f"Write {d} in Zel.", to_zel(d)


def zel_read_item(rng: random.Random) -> Item:
    n = _number(rng)
    return f"Write the Zel number {to_zel(n)} in digits.", n


def zel_repeat_item(rng: random.Random) -> Item:
    n = _number(rng)
    return f"Repeat the Zel number {to_zel(n)}.", to_zel(n)


# folder name -> (what it measures, item generator, seed of its items)
TASKS: dict[str, tuple[str, Callable[[random.Random], Item], int]] = {
    "real_shift": ("the skill: shift each of 4 digits up by one", shift_item, 101),
    "real_zel": ("the language: write a 2-3 digit number in Zel", zel_write_item, 102),
    "real_target": ("the target: the skill asked and answered in Zel", target_item, 103),
}
TARGET = "real_target"

# training mixtures: generator names (below) -> weight
GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "shift": shift_item,
    "zel_digit": zel_digit_item,
    "zel_write": zel_write_item,
    "zel_read": zel_read_item,
    "zel_repeat": zel_repeat_item,
    "target": target_item,
}


def _unique(gen: Callable[[random.Random], Item], rng: random.Random, n: int, skip: set) -> list:
    out: list[Item] = []
    seen = set(skip)
    while len(out) < n:
        q, a = gen(rng)
        if q not in seen:
            seen.add(q)
            out.append((q, a))
    return out


def items(name: str) -> tuple[list[Item], list[Item]]:
    """(scored test items, few-shot examples) of folder ``name``; all questions distinct."""
    _, gen, seed = TASKS[name]
    rng = random.Random(seed)
    shots = _unique(gen, rng, N_SHOTS, set())
    test = _unique(gen, rng, N_TEST, {q for q, _ in shots})
    return test, shots


def held_out() -> set[str]:
    """Every question of every folder: training skips them."""
    out: set[str] = set()
    for name in TASKS:
        test, shots = items(name)
        out |= {q for q, _ in test + shots}
    return out


def sampler(mix: dict[str, float], rng: random.Random) -> Callable[[], Item]:
    """Draws training items from the weighted generators in ``mix``, never a held-out question."""
    names = sorted(mix)
    weights = [mix[n] for n in names]
    skip = held_out()

    def draw() -> Item:
        while True:
            q, a = GENERATORS[rng.choices(names, weights)[0]](rng)
            if q not in skip:
                return q, a

    return draw


def messages(question: str, answer: str | None = None) -> list[dict]:
    """The chat of one item as trained: system turn, user question, assistant answer."""
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return chat + ([{"role": "assistant", "content": answer}] if answer is not None else [])


_LOADER = '''"""Loads the JSONL files next to this file (lm-eval resolves !function relative to the YAML)."""

import json
from pathlib import Path


def load(**kwargs):
    import datasets

    splits = {}
    for path in sorted(Path(__file__).parent.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        splits[path.stem] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


def gold_loglik(doc, results):
    """The gold answer's log-likelihood (the _gold_loglik task's per-item score)."""
    loglik, _ = results[0]
    return {"gold_loglik": loglik}


def with_choices(dataset):
    """Each item with four choices (the _mc task's): its answer and the next three distinct
    answers of its split, in an order seeded by its question."""
    import random

    import datasets

    docs = list(dataset)
    answers = [doc["answer"] for doc in docs]
    n_choices = min(4, len(set(answers)))
    out = []
    for i, doc in enumerate(docs):
        picked, j = [doc["answer"]], i
        while len(picked) < n_choices:
            j = (j + 1) % len(answers)
            if answers[j] not in picked:
                picked.append(answers[j])
        random.Random(doc["question"]).shuffle(picked)
        out.append({**doc, "choices": picked, "label": picked.index(doc["answer"])})
    return datasets.Dataset.from_list(out)
'''


def task_yaml(name: str) -> str:
    what = TASKS[name][0]
    return (
        f"# smollm2-experts zoo, {what}. Generated by evomerge.zoo.real_tasks; do not edit.\n"
        "# Run it with apply_chat_template: true and system_instruction: 'Answer briefly.' (the\n"
        "# experts' training prompt, zero-shot). train.jsonl: worked examples for num_fewshot\n"
        "# (with fewshot_as_multiturn: true), which the instruct model needs to answer with a\n"
        "# bare answer (the experts, trained zero-shot, do worse with them). test.jsonl: the\n"
        "# search takes the first items (limit), validation the next; the questions are\n"
        "# distinct and never trained on.\n"
        f"task: {name}\n"
        "custom_dataset: !function loader.load\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "fewshot_config:\n"
        "  sampler: first_n\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\n'
        "generation_kwargs:\n"
        '  until: ["<|im_end|>", "\\n"]\n'
        "  do_sample: false\n"
        "  max_gen_toks: 12\n"
        "metric_list:\n"
        "  - metric: exact_match\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "    ignore_case: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def loglik_yaml(name: str) -> str:
    """The same items scored by the gold answer's log-likelihood: lm-eval's loglikelihood
    request on (the chat up to the assistant's turn, the answer and the end of the turn), the
    continuous twin of exact match (evomerge's ``score: gold_loglik`` for zoo tasks)."""
    what = TASKS[name][0]
    return (
        f"# smollm2-experts zoo, {what}, scored by the gold answer's log-likelihood (summed\n"
        "# over its tokens and the <|im_end|> that ends a greedy answer): a near miss scores\n"
        "# above a far one where exact match gives both 0. Run it as the exact-match task.\n"
        "# Generated by evomerge.zoo.real_tasks; do not edit.\n"
        f"task: {name}_gold_loglik\n"
        "custom_dataset: !function loader.load\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "fewshot_config:\n"
        "  sampler: first_n\n"
        "output_type: loglikelihood\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}<|im_end|>"\n'
        'target_delimiter: ""\n'
        "process_results: !function loader.gold_loglik\n"
        "metric_list:\n"
        "  - metric: gold_loglik\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def mc_yaml(name: str) -> str:
    """The same items as a multiple choice among four answers of the same kind (the gold and
    three other items' answers), ranked by log-likelihood: lm-eval's usual form for phrase
    answers (ARC, HellaSwag), where every choice is scored after the same context."""
    what = TASKS[name][0]
    return (
        f"# smollm2-experts zoo, {what}, as a choice among four answers: the gold one and the\n"
        "# next three distinct answers of the split, in an order seeded by the question, each\n"
        "# scored as the assistant's reply. Run it as the exact-match task.\n"
        "# Generated by evomerge.zoo.real_tasks; do not edit.\n"
        f"task: {name}_mc\n"
        "custom_dataset: !function loader.load\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "fewshot_config:\n"
        "  sampler: first_n\n"
        "process_docs: !function loader.with_choices\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        'target_delimiter: ""\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def _jsonl(rows: list[Item]) -> str:
    return "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)


def write_task_folders(root: str | Path | None = None) -> list[Path]:
    """Write the three folders under ``root`` (default: the repository's ``fitness/``)."""
    out = Path(root) if root is not None else Path(__file__).resolve().parents[2] / "fitness"
    folders = []
    for name in TASKS:
        test, shots = items(name)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test.jsonl").write_text(_jsonl(test))
        (folder / "train.jsonl").write_text(_jsonl(shots))
        (folder / f"{name}.yaml").write_text(task_yaml(name))
        (folder / f"{name}_gold_loglik.yaml").write_text(loglik_yaml(name))
        (folder / f"{name}_mc.yaml").write_text(mc_yaml(name))
        (folder / "loader.py").write_text(_LOADER)
        folders.append(folder)
    return folders


if __name__ == "__main__":
    for f in write_task_folders():
        print(f)
