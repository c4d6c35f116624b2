"""Training the Twin-Merging router (Lu et al. 2024, arXiv 2406.15479): a classifier from the
shared expert's representation of an input, Emb(x), to the expert whose task the input is,
trained with cross-entropy on a small labelled set; at inference its softmax weights the
experts' exclusive parts. Optimiser and schedule follow the authors' code (generative/router.py,
a transformers ``Trainer``: AdamW, lr 5e-4, batch 256, 50 epochs, linear decay). Their Trainer
also keeps the epoch with the best accuracy on a second split; with one small set we keep the
last epoch (no split to choose on without taking items from the router's training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.twin.modeling_twin_merging import TwinRouter


@torch.no_grad()
def shared_features(model, tokenizer, prompts: Sequence[str], batch: int = 64) -> torch.Tensor:
    """Emb(x) of each prompt: the shared expert's last hidden states, mean over its tokens.
    Prompts of one length go together, so no padding ever enters the features."""
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    feats = torch.zeros(len(prompts), model.config.hidden_size)
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for idxs in by_len.values():
        for start in range(0, len(idxs), batch):
            chunk = idxs[start : start + batch]
            ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long)
            feats[chunk] = model.shared_embedding(ids)
    return feats


def train_router(
    router: TwinRouter,
    feats: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """Train ``router`` in place (seeded: same inputs and seed, same weights); returns its
    accuracy on the training examples, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initialisation and dropout draws
        for m in router.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=0.0)
        steps_per_epoch = -(-len(feats) // batch_size)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
        router.train()
        for _ in range(epochs):
            order = torch.randperm(len(feats), generator=gen)
            for start in range(0, len(feats), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:  # batch norm needs two examples; drop a last batch of one
                    continue
                loss = torch.nn.functional.cross_entropy(router(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    router.eval()
    with torch.no_grad():
        return float((router(feats).argmax(-1) == labels).float().mean())
