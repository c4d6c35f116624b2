"""``evomerge report DIR --out DIR``: PNG plots and a markdown/HTML summary of a run
(``evomerge.report``)."""

from __future__ import annotations

from pathlib import Path

from evomerge.commands.console import out


def report(run_dir: Path, out_dir: Path) -> int:
    from evomerge.report import write_report

    files = write_report(run_dir, out_dir)
    for f in files:
        out.print(f"wrote {f}")
    return 0
