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
