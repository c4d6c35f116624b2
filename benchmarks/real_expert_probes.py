"""Probes for the smollm2-experts design (docs/real_experts.md, "Vocabulary remap"): a Zel
language expert trained as a vocabulary remap by distillation on parallel text, merged with a
skill expert confined to blocks 5-14, scored on the target with the folders' protocol.

    python benchmarks/real_expert_probes.py [--out /tmp/zelremap_scratch] [--tables remap]
        [--reader-steps 120] [--reader-mse 1.0 --reader-from OUT/reader_s120_lr0.01.pt]
        [--writer-hidden teacher|student] [--lora-steps 40 --lora-lr 2e-3]
        [--export DIR | --lm-eval-grid DIR | --zoo-parts]

(docs/real_experts.md gives the commands behind its tables.) Stages, each cached under OUT
(delete OUT to retrain):

* ``skill``: skill C, PEFT LoRA rank 8 on blocks 5-14, 60 steps at 5e-4 on real_shift items;
* ``reader``: the input-embedding rows of the 20 Zel tokens (each syllable bare and with its
  leading space), trained so that the model's next-token distributions on a text with a number
  written in Zel match the frozen instruct model's on the same text with the number in digits
  (KL at every position from the number on; the positions align one to one: a Zel syllable and
  a digit are one token each, a digit run after a space is one space token more);
* ``writer``: the output-head rows (head untied) of the Zel and digit tokens, trained on the
  model's own digit answers: the teacher (instruct) reads a digit-producing prompt with its
  answer in digits, teacher-forced; the head rows must turn the hidden states into the
  teacher's distribution with each digit's mass moved to its Zel token (bare as the answer's
  first token, with a space after), at every position from the first number on. The hidden
  states are the teacher's own (``--writer-hidden teacher``: rewrite the digits the model
  produces) or the student's, which reads the answer in Zel through the reader (``student``);
* the language LoRA (``--lora-steps``): blocks 0-4 and 25-29 trained over the remap on the
  language task's own items, so that the expert answers "Write 472 in Zel." with the number;
* the tables: each expert, the remap, the oracle reader and writer, and task arithmetic
  merges (sum, a weight grid, a layer-group grid) on the three folders; ``--export`` writes the
  experts as model folders and ``--lm-eval-grid`` scores the weight grid through lm-eval.

Scoring follows the folders (chat template, system turn "Answer briefly.", zero-shot, greedy,
12 new tokens cut at <|im_end|> or a newline, exact match ignoring case) without lm-eval:
validation items 40-79, the grids on the target's search items 0-39. Seeded; one torch thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evomerge.zoo.real_tasks import ZEL, items, messages, sampler  # noqa: E402
from evomerge.zoo.zel_remap import train_language_lora as fit_language_lora  # noqa: E402
from evomerge.zoo.zel_remap import (  # noqa: E402  (the zoo's language-expert stages)
    train_reader,
    train_writer,
    untie,
)
from evomerge.zoo.zel_texts import token_ids  # noqa: E402

# ---------------------------------------------------------------- model and tokens


def load_base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.model_refs import resolve_model_ref  # the zoo's folder (built if missing)

    folder = resolve_model_ref("zoo:smollm2/instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return folder, tok, model


# ---------------------------------------------------------------- training


def train_skill(folder: Path, tok, out: Path, steps=60, lr=5e-4, blocks=range(5, 15), seed=10):
    """Skill C as in the earlier probes: LoRA rank 8 on blocks 5-14; returns the merged delta."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evomerge.zoo.lora_fit import LORA_MODULES, fit_lora

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(LORA_MODULES),
        lora_dropout=0.0,
        layers_to_transform=list(blocks),
    )
    model = get_peft_model(model, cfg)
    draw = sampler({"shift": 1.0}, random.Random(seed))
    fit_lora(model, tok, draw, steps=steps, lr=lr, warmup=10, batch=8, report=_every(20, "skill"))
    merged = model.merge_and_unload().state_dict()
    delta = {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}
    torch.save(delta, out)
    return delta


def _every(n: int, label: str):
    """A training report: the loss every ``n`` steps."""

    def report(step: int, loss: float) -> None:
        if step % n == 0:
            print(f"  {label} step {step} loss {loss:.3f}", flush=True)

    return report


def train_language_lora(model, tok, out: Path, steps: int, lr: float, blocks, seed: int = 11):
    """The zoo's language LoRA (zoo/zel_remap.py) trained on a copy of the model as it is (base
    + reader + writer); returns and caches its merged delta."""
    import copy

    import torch

    student = copy.deepcopy(model)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    mix = {"zel_write": 2.0, "zel_digit": 1.0}
    merged = fit_language_lora(student, tok, steps, lr, blocks, mix, seed, log=print).state_dict()
    delta = {k: merged[k] - before[k] for k in before if not torch.equal(merged[k], before[k])}
    torch.save(delta, out)
    return delta


# ---------------------------------------------------------------- scoring


def generate(model, tok, questions: list[str], max_new=12) -> list[str]:
    import torch

    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template(messages(q), add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    out = []
    for i in range(0, len(prompts), 20):
        enc = tok(prompts[i : i + 20], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id
            )
        for row in gen[:, enc.input_ids.shape[1] :]:
            text = tok.decode(row, skip_special_tokens=False)
            out.append(text.split("<|im_end|>")[0].split("\n")[0].strip())
    return out


def score(model, tok, task: str, split: str, against=None) -> tuple[float, list[str]]:
    test, _ = items(task)
    rows = test[:40] if split == "search" else test[40:80]
    answers = [against(a) if against else a for _, a in rows]
    got = generate(model, tok, [q for q, _ in rows])
    hits = sum(g.lower() == a.lower() for g, a in zip(got, answers, strict=True))
    return hits / len(rows), got[:3]


def from_zel(zel: str) -> str:
    return "".join(str(ZEL.index(w)) for w in zel.split())


# ---------------------------------------------------------------- merges


def with_deltas(model, base_sd: dict, deltas: list[tuple[dict, object]]) -> None:
    """model <- base + sum of w * delta; w is a number or a function of the tensor's name."""
    import torch

    sd = {k: v.clone() for k, v in base_sd.items()}
    for delta, w in deltas:
        for k, d in delta.items():
            sd[k] += (w(k) if callable(w) else w) * d
    with torch.no_grad():
        model.load_state_dict(sd)


def block_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def lora_eval(args, model, tok, base_sd, remap, remap_path, skill, table) -> None:
    """The remap expert plus a LoRA on blocks 0-4 and 25-29 trained on its own task: alone,
    summed with skill C, a weight grid and a layer-group grid (rows vs LoRA weights)."""
    import torch

    t0 = time.time()
    path = remap_path.with_stem(f"{remap_path.stem}_lora_s{args.lora_steps}_lr{args.lora_lr}")
    if path.exists():
        lora = torch.load(path)
    else:
        with_deltas(model, base_sd, [(remap, 1.0)])
        lora = train_language_lora(
            model, tok, path, args.lora_steps, args.lora_lr, [*range(0, 5), *range(25, 30)]
        )
    print(f"language LoRA: {len(lora)} tensors ({time.time() - t0:.0f} s)", flush=True)
    table("language = remap + LoRA", [(remap, 1.0), (lora, 1.0)])
    table("sum: skill C + language, w 1", [(skill, 1.0), (remap, 1.0), (lora, 1.0)])
    for ws, wl in [(0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        table(
            f"grid w_skill {ws} w_language {wl} (search items)",
            [(skill, ws), (remap, wl), (lora, wl)],
            split="search",
            tasks=("target",),
            extra=False,
        )
    for wr, wlo in [(1, 0), (1, 0.5), (1.5, 0.5), (1.5, 1), (1, 1.5), (1.5, 0)]:
        table(
            f"layer groups: skill 1, rows {wr}, LoRA {wlo} (search items)",
            [(skill, 1.0), (remap, wr), (lora, wlo)],
            split="search",
            tasks=("target",),
            extra=False,
        )


def export(args, model, tok, base_sd, skill, remap, remap_path) -> None:
    """Full float32 folders (untied head): evomerge takes their task vectors against the
    instruct folder (tied: its embedding stands in for the head, docs/real_models.md)."""
    import torch

    path = remap_path.with_stem(f"{remap_path.stem}_lora_s{args.lora_steps}_lr{args.lora_lr}")
    if path.exists():
        lora = torch.load(path)
    elif args.lora_steps:  # train it here: the export needs no tables (seeded as in lora_eval)
        with_deltas(model, base_sd, [(remap, 1.0)])
        lora = train_language_lora(
            model, tok, path, args.lora_steps, args.lora_lr, [*range(0, 5), *range(25, 30)]
        )
    else:
        raise SystemExit("--export: the language expert needs its LoRA; pass --lora-steps 40")
    for name, deltas in [("skill", [(skill, 1.0)]), ("language", [(remap, 1.0), (lora, 1.0)])]:
        with_deltas(model, base_sd, deltas)
        model.save_pretrained(args.export / name)
        tok.save_pretrained(args.export / name)
        print(f"wrote {args.export / name}", flush=True)


def lm_eval_grid(experts: Path, out: Path) -> None:
    """The weight grid of task arithmetic over the exported experts as evomerge recipes, scored
    by lm-eval through the experiment's fitness (benchmarks/real_search.py's scorer) on the
    target's search and validation items: the best simple merge, chosen on search items."""
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_search import score as lm_eval_score

    from evomerge.model_refs import resolve_model_ref

    base = resolve_model_ref("zoo:smollm2/instruct")
    for ws, wl in [(1, 1), (0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        recipe = {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [
                {"model": str(experts / "skill"), "parameters": {"weight": ws}},
                {"model": str(experts / "language"), "parameters": {"weight": wl}},
            ],
            "dtype": "float32",
        }
        path = out / f"ta_{ws}_{wl}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        got = lm_eval_score(path, {"target": "search"})["target"]
        val = lm_eval_score(path, {"target": "validation"})["target"]
        print(
            f"| task arithmetic w_skill {ws} w_language {wl} | search {got:.3f} | "
            f"validation {val:.3f} |",
            flush=True,
        )


def zoo_parts() -> None:
    """The built zoo's experts taken apart (zoo:smollm2-experts): the skill adapter with the
    language expert's input rows only (target scored in digits: does the reader read?), with
    its rows only (embedding and head, no LoRA), and with all of it; the probe's scorer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evomerge.model_refs import resolve_model_ref

    folder, tok, model = load_base()
    untie(model)
    model.eval()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    zoo = Path(resolve_model_ref("zoo:smollm2-experts/skill")).parent

    def delta(sd: dict) -> dict:
        return {k: sd[k] - base_sd[k] for k in sd
                if k in base_sd and not torch.equal(sd[k], base_sd[k])}  # fmt: skip

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    skill = delta(
        PeftModel.from_pretrained(plain, str(zoo / "skill")).merge_and_unload().state_dict()
    )
    lang = delta(
        AutoModelForCausalLM.from_pretrained(zoo / "language", dtype=torch.float32).state_dict()
    )
    reader = {k: v for k, v in lang.items() if k == "model.embed_tokens.weight"}
    rows = {k: v for k, v in lang.items() if k in ("model.embed_tokens.weight", "lm_head.weight")}
    print(f"zoo {zoo.name}: skill {len(skill)} tensors, language {len(lang)}")
    for label, deltas, against in [
        ("skill + reader rows, target scored in digits", [(skill, 1), (reader, 1)], from_zel),
        ("skill + rows (embedding, head), no LoRA", [(skill, 1), (rows, 1)], None),
        ("skill + rows 1.5, no LoRA", [(skill, 1), (rows, 1.5)], None),
        ("skill 1.5 + language 1 (task arithmetic)", [(skill, 1.5), (lang, 1)], None),
    ]:
        with_deltas(model, base_sd, deltas)
        got, ex = score(model, tok, "real_target", "validation", against=against)
        print(f"| {label} | {got:.3f} | e.g. {ex[0]!r} |", flush=True)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/zelremap_scratch"))
    ap.add_argument("--reader-steps", type=int, default=120)
    ap.add_argument("--reader-lr", type=float, default=1e-2)
    ap.add_argument("--reader-mse", type=float, default=0.0)
    ap.add_argument("--reader-from", type=Path, help="start from this cached reader")
    ap.add_argument("--writer-steps", type=int, default=300)
    ap.add_argument("--writer-lr", type=float, default=1e-2)
    ap.add_argument("--writer-hidden", choices=["student", "teacher"], default="teacher")
    ap.add_argument("--lora-steps", type=int, default=0, help="0: no language LoRA")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument(
        "--export",
        type=Path,
        help="write skill C and the language expert "
        "(remap + LoRA) as model folders here for an evomerge search, then stop",
    )
    ap.add_argument("--tables", choices=["all", "remap"], default="all")
    ap.add_argument(
        "--lm-eval-grid",
        type=Path,
        metavar="EXPERTS",
        help="score the task-arithmetic grid over these exported experts with lm-eval",
    )
    ap.add_argument("--zoo-parts", action="store_true", help="the built zoo's experts taken apart")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.zoo_parts:
        zoo_parts()
        return 0
    if args.lm_eval_grid:
        lm_eval_grid(args.lm_eval_grid, args.out)
        return 0
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    folder, tok, model = load_base()
    ids = token_ids(tok)
    untie(model)
    model.eval()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}

    t0 = time.time()
    skill_path = args.out / "skill_c.pt"
    skill = torch.load(skill_path) if skill_path.exists() else train_skill(folder, tok, skill_path)
    print(f"skill C: {len(skill)} tensors ({time.time() - t0:.0f} s)", flush=True)

    def delta_now() -> dict:
        sd = model.state_dict()
        return {k: sd[k] - base_sd[k] for k in base_sd if not torch.equal(sd[k], base_sd[k])}

    t0 = time.time()
    reader_path = args.out / f"reader_s{args.reader_steps}_lr{args.reader_lr}.pt"
    if args.reader_mse or args.reader_from:
        start = f"_from_{args.reader_from.stem}" if args.reader_from else ""
        reader_path = reader_path.with_stem(f"{reader_path.stem}_mse{args.reader_mse}{start}")
    if reader_path.exists():
        reader_only = torch.load(reader_path)
        with_deltas(model, base_sd, [(reader_only, 1.0)])
    else:
        if args.reader_from:
            with_deltas(model, base_sd, [(torch.load(args.reader_from), 1.0)])
        seed = 21 if args.reader_from else 20  # a continued reader sees new texts
        train_reader(
            model, tok, ids, args.reader_steps, args.reader_lr, args.reader_mse, seed, log=print
        )
        reader_only = delta_now()
        torch.save(reader_only, reader_path)
    print(f"reader: {sorted(reader_only)} ({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time()
    tag = f"writer_s{args.writer_steps}_lr{args.writer_lr}_{args.writer_hidden}"
    remap_path = args.out / f"{reader_path.stem}_{tag}.pt"
    if remap_path.exists():
        remap = torch.load(remap_path)
    else:
        on_teacher = args.writer_hidden == "teacher"
        train_writer(model, tok, ids, args.writer_steps, args.writer_lr, on_teacher, log=print)
        remap = delta_now()
        torch.save(remap, remap_path)
    print(f"remap: {sorted(remap)} ({time.time() - t0:.0f} s)", flush=True)

    emb = base_sd["model.embed_tokens.weight"]
    rows = emb + reader_only["model.embed_tokens.weight"]
    cos = torch.nn.functional.cosine_similarity
    for form in ("bare", "space"):
        c = [cos(rows[ids[form][d]], emb[ids["digit"][d]], 0).item() for d in range(10)]
        c0 = [cos(emb[ids[form][d]], emb[ids["digit"][d]], 0).item() for d in range(10)]
        print(
            f"cosine of the {form} Zel input rows to their digit's row: "
            f"trained mean {sum(c) / 10:.3f} (min {min(c):.3f}), instruct mean {sum(c0) / 10:.3f}"
        )

    oracle = torch.zeros_like(emb)
    for d in range(10):
        for form in ("bare", "space"):
            oracle[ids[form][d]] = emb[ids["digit"][d]] - emb[ids[form][d]]
    oracle = {"model.embed_tokens.weight": oracle}
    # the oracle writer: the head's spaced Zel rows and digit rows swapped (a permutation of the
    # output vocabulary: the model writes " z_d" wherever it would write d)
    head0 = base_sd["lm_head.weight"]
    swap = torch.zeros_like(head0)
    for d in range(10):
        z, g = ids["space"][d], ids["digit"][d]
        swap[z], swap[g] = head0[g] - head0[z], head0[z] - head0[g]
    oracle_writer = {"lm_head.weight": swap}

    def table(label, deltas, split="validation", tasks=("target", "skill", "zel"), extra=True):
        with_deltas(model, base_sd, deltas)
        cells = []
        names = {"target": "real_target", "skill": "real_shift", "zel": "real_zel"}
        for t in tasks:
            s, ex = score(model, tok, names[t], split)
            cells.append(f"{t} {s:.3f}")
            if t == "target" and extra:
                s2, _ = score(model, tok, "real_target", split, against=from_zel)
                cells.append(f"target-in-digits {s2:.3f}")
            cells.append(f"e.g. {ex[0]!r}")
        print(f"| {label} | " + " | ".join(cells), flush=True)

    if args.export:
        export(args, model, tok, base_sd, skill, remap, remap_path)
        return 0
    t0 = time.time()
    if args.tables == "all":
        table("instruct", [])
        table("skill C", [(skill, 1.0)])
        table("reader only", [(reader_only, 1.0)])
        table("skill C + oracle reader", [(skill, 1.0), (oracle, 1.0)])
        table(
            "skill C + oracle reader + oracle writer",
            [(skill, 1.0), (oracle, 1.0), (oracle_writer, 1.0)],
        )
    table("remap (reader + writer)", [(remap, 1.0)])
    table("skill C + reader", [(skill, 1.0), (reader_only, 1.0)], tasks=("target",))
    table(
        "skill C + reader + oracle writer",
        [(skill, 1.0), (reader_only, 1.0), (oracle_writer, 1.0)],
        tasks=("target",),
    )
    table("sum: skill C + remap, w 1", [(skill, 1.0), (remap, 1.0)])
    for ws, wl in [(0.5, 0.5), (1, 0.5), (0.5, 1), (1, 1.5), (1.5, 1)]:
        table(
            f"grid w_skill {ws} w_remap {wl} (search items)",
            [(skill, ws), (remap, wl)],
            split="search",
            tasks=("target",),
            extra=False,
        )
    print(f"eval {time.time() - t0:.0f} s", flush=True)
    if args.lora_steps:
        lora_eval(args, model, tok, base_sd, remap, remap_path, skill, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
