"""``evomerge status DIR``: progress, the batch asked ahead and not yet scored, the archive in
winner order, threads, why the search stopped and its failures by reason (the store is read
only; a running search may go on)."""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out


def status(run_dir: Path) -> int:
    from evomerge.config import experiment_from_json
    from evomerge.fitness.constraints import Constraints, summary_lines
    from evomerge.outcome import outcome_lines
    from evomerge.report_data import item_count, outside_budget
    from evomerge.store import RunStore
    from evomerge.validation import member_line, ranking

    with RunStore.open(run_dir, readonly=True) as st:
        cfg = experiment_from_json(st.config_json())
        c, cp = st.counts(), st.last_checkpoint()
        in_flight = asked_ahead(st, cp)
        items, stopped, outside = st.item_evals(), len(st.partial_idx()), outside_budget(st)
        ranked = ranking(st)
        top = [st.trial(m.idx) for m in ranked.members]
        threads = st.get_meta("threads")
        outcome = outcome_lines(st)
        cons = Constraints.of(cfg.fitness)
        feasibility = summary_lines(cons, st.trials()) if cons is not None else []
    budget = cfg.budget.max_evals
    out.print(f"run {run_dir} ({cfg.name}): driver {cfg.driver.name}, space {cfg.space.kind}")
    out.print(
        f"generations {c['generations']}  candidates {c['candidates']}  evaluated "
        f"{c['evaluated']}{f'/{budget}' if budget else ''}  failed {c['failed']}"
    )
    count = item_count(items, cfg.budget.max_item_evals, cfg.fitness.racing, stopped, outside)
    out.print(f"item evaluations {count}")
    if in_flight:
        out.print(in_flight_line(in_flight))
    if cp is not None:
        out.print(f"search time {cp.elapsed:.0f} s")
    if threads:
        out.print(f"threads {threads}")
    for line in feasibility:
        out.print(line, markup=False, highlight=False)
    if ranked.enabled and top:
        gap = "; gap = search - validation" if ranked.comparable else ""
        out.print(f"archive ranked by {ranked.by} ({ranked.winner_note()}{gap})")
    for rank, (t, m) in enumerate(zip(top, ranked.members, strict=True), 1):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in t.scores.items())
        score = member_line(m) if ranked.enabled else f"fitness {t.fitness:.4f}"
        out.print(f"  #{rank} {t.digest[:12]} {score}  ({scores})")
    if not top:
        out.print("  no successful candidate yet")
    for line in outcome:
        out.print(line, markup=False, highlight=False)
    return 0


def asked_ahead(store, checkpoint) -> list[int]:
    """The indices of the batch the last commit asked ahead: the store's ``pending`` table, or,
    in a store written before it, the batch pickled in the driver state (``loop_legacy``)."""
    indices = [p.idx for p in store.pending()]
    if indices or checkpoint is None:
        return indices
    from evomerge.loop_legacy import LEGACY_KEY, split_legacy_state

    if LEGACY_KEY.encode() not in checkpoint.driver_state:  # skip unpickling every other state
        return []
    import pickle

    _, legacy = split_legacy_state(pickle.loads(checkpoint.driver_state))
    return [entry[0] for entry in legacy or ()]


def in_flight_line(indices: list[int]) -> str:
    """One line: how many candidates were asked ahead and are not scored yet (a running search
    is scoring them; after a stop, ``resume`` scores them before asking more)."""
    span = f"#{indices[0]}" if len(indices) == 1 else f"#{indices[0]}-#{indices[-1]}"
    return (
        f"in flight {len(indices)} candidate(s) asked ahead, not yet scored ({span}; "
        "resume scores them first)"
    )
