"""PLeaS on LM zoo models: the data both models read is drawn from zoo tasks' training items.

``data`` names zoo tasks, comma-separated: the task data of the models' own mixture (for
lm-seeds, ``zoo_copy,zoo_cipher_part,zoo_shift_part,zoo_sort_part,zoo_reverse_part``), or a
public proxy, tasks the models never trained on (``zoo_shift,zoo_sort,zoo_reverse_a``: other
tasks over the same characters; the paper's PLeaS-free). Items are drawn from each task's
training sampler (never a test prompt), in turn, with a fixed seed.
"""

from __future__ import annotations

import random

from evomerge.errors import UserInputError

SEEDS_TASKS = "zoo_copy,zoo_cipher_part,zoo_shift_part,zoo_sort_part,zoo_reverse_part"
SEEDS_PROXY = "zoo_shift,zoo_sort,zoo_reverse_a"
ITEMS = 400  # on the first, 64-wide lm-seeds pair 1,500 items moved PLeaS's loss by 0.008


def task_texts(data: str, n: int = ITEMS, seed: int = 0) -> list[str]:
    """``n`` training texts (prompt + answer + newline, as the zoo trains) from the tasks of
    ``data``, taken in turn."""
    from evomerge.zoo.tasks import TASKS, train_sampler

    names = [t.strip() for t in data.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if not names or unknown:
        raise UserInputError(
            f"--data: {data!r} names no zoo task ({', '.join(unknown) or 'empty'}); for an LM "
            f"give zoo task names, comma-separated, e.g. {SEEDS_TASKS}"
        )
    rng = random.Random(seed)
    samplers = [train_sampler(t) for t in names]
    texts = []
    for i in range(n):
        prompt, answer = samplers[i % len(samplers)](rng)
        texts.append(prompt + answer + "\n")
    return texts
