"""The SQLite schema of a run's store (``<run_dir>/store.sqlite``), documented table by table.

One file per run folder, WAL journal (a reader such as ``evomerge status`` never blocks the
search, and the search never blocks it). Every generation is written by ONE transaction that
holds its candidates, their results, the driver's state, the loop's RNG state, the generation
counter and the archive table, so after a crash (SIGKILL included) the file is exactly the state
after some generation boundary and ``evomerge resume`` continues from there. One writer at a
time: a search or resume holds ``<run_dir>/run.lock`` (``evomerge.run_lock``) while it runs.

Tables
------
``meta``          key/value: ``schema_version``, ``evomerge_version``, ``baselines`` (JSON: each
                  expert's fitness and task scores, measured once at the start of the search),
                  ``stop`` (JSON ``{reason, detail, time}``: why the last search stopped; reason
                  null while one runs or after it was killed; see ``evomerge.stop_reason``),
                  ``fitness_digest`` (JSON {"<task>: <path>": sha256[:16]} of the fitness files
                  and task folders, ``evomerge.fitness.digest``; resume compares it),
                  ``fitness_changes`` (JSON list of changes accepted with
                  ``--allow-changed-fitness``: time, changed entries, digests before/after),
                  ``validation`` (JSON ``{digest: {fitness, scores, error}}``: archive members
                  re-scored on held-out items; see ``evomerge.validation``),
                  ``validation_baselines`` (JSON ``{label: {fitness, scores, error}}``: the
                  baselines on the same items; ``evomerge.validation_baselines``).
``run``           a single row (id = 1): ``config_json`` is the resolved ExperimentConfig,
                  ``structural_hash`` the sha256 of its structural part (see
                  ``evomerge.config.ExperimentConfig.structural_hash``), ``created`` (unix time).
``candidates``    one row per told candidate, ``idx`` = the driver's ask counter (0, 1, 2, ...):
                  ``generation``, ``digest`` (Recipe.digest()), ``genes_json`` (the gene vector,
                  JSON floats round-trip exactly), ``recipe_yaml``, ``reused_from`` (idx of the
                  earlier candidate whose result was reused because the digest was already
                  scored; NULL when evaluated), ``meta_json`` (the driver's per-candidate meta).
``results``       one row per candidate (``idx``): ``status`` (OK | FAIL), ``fitness`` (NULL
                  for NaN), ``objectives_json``, ``scores_json`` ({task: score}),
                  ``per_example_json`` (EvalResult.to_json(), per-example correctness included),
                  ``error``, ``seconds``, ``worker``.
``checkpoints``   one row per committed generation: ``generation``, ``driver_state`` (pickled
                  ``Driver.state_dict()``), ``rng_state`` (pickled loop RNG state),
                  ``n_candidates``, ``n_evals`` (fresh evaluations so far), ``elapsed`` (search
                  seconds so far, summed over resumes), ``created``. Only the newest few rows are
                  kept: resume needs the last one.
``archive``       the top-k: ``rank`` (0 = best), ``digest``, ``idx``, ``fitness``. The models
                  live in ``<run_dir>/archive/<digest>/`` (HF folders, written atomically).
``pending``       the batch a driver that asks ahead (``Driver.can_ask_ahead``) has asked but
                  not yet been told at the last commit: ``idx``, ``genes_json`` and ``meta_json``
                  (for readers), ``candidate`` (pickled ``(x, meta, wants)`` exactly as asked).
                  Rewritten by every generation's transaction, so it always belongs to the last
                  checkpoint; resume evaluates these candidates instead of asking again. Empty
                  for drivers that do not ask ahead. (Stores of evomerge before this table kept
                  the batch inside ``driver_state`` under ``__ask_ahead__``; resume still reads
                  them: ``evomerge.loop_ahead``.)
"""

from __future__ import annotations

SCHEMA_VERSION = 1
KEEP_CHECKPOINTS = 3

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    config_json     TEXT NOT NULL,
    structural_hash TEXT NOT NULL,
    created         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    idx         INTEGER PRIMARY KEY,
    generation  INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    genes_json  TEXT NOT NULL,
    recipe_yaml TEXT NOT NULL,
    reused_from INTEGER,
    meta_json   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS candidates_digest ON candidates (digest);
CREATE INDEX IF NOT EXISTS candidates_generation ON candidates (generation);
CREATE TABLE IF NOT EXISTS results (
    idx              INTEGER PRIMARY KEY REFERENCES candidates (idx),
    status           TEXT NOT NULL CHECK (status IN ('OK', 'FAIL')),
    fitness          REAL,
    objectives_json  TEXT NOT NULL DEFAULT '[]',
    scores_json      TEXT NOT NULL DEFAULT '{}',
    per_example_json TEXT,
    error            TEXT,
    seconds          REAL NOT NULL DEFAULT 0,
    worker           TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS checkpoints (
    generation   INTEGER PRIMARY KEY,
    driver_state BLOB NOT NULL,
    rng_state    BLOB NOT NULL,
    n_candidates INTEGER NOT NULL,
    n_evals      INTEGER NOT NULL,
    elapsed      REAL NOT NULL,
    created      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS archive (
    rank    INTEGER PRIMARY KEY,
    digest  TEXT NOT NULL UNIQUE,
    idx     INTEGER NOT NULL,
    fitness REAL NOT NULL
);
"""

# Also run when a writer opens a store made before the table existed (same schema version:
# an older evomerge never reads it, and resume needs it).
PENDING_DDL = """
CREATE TABLE IF NOT EXISTS pending (
    idx        INTEGER PRIMARY KEY,
    genes_json TEXT NOT NULL,
    meta_json  TEXT NOT NULL DEFAULT '{}',
    candidate  BLOB NOT NULL
)"""
