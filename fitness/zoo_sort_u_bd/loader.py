"""Loads test.jsonl next to this file (lm-eval resolves !function relative to the YAML)."""
import json
from pathlib import Path


def load(**kwargs):
    import datasets

    path = Path(__file__).with_name("test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
