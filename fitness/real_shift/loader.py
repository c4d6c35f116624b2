"""Loads the JSONL files next to this file (lm-eval resolves !function relative to the YAML)."""

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
