"""The tiny MoE the MoE tests share: the quick lm-moe zoo (built once into the zoo cache), and
its MC-SMoE compression run once per session through `evomerge moe-reduce`."""

from __future__ import annotations

from pathlib import Path

CALIB = Path(__file__).parents[2] / "fitness" / "calibration" / "lm-moe.txt"
# rank 16 of the experts' 96 x 128 matrices, 10% of S kept, a short fine-tuning
COMPRESS = "rank=16,sparsity=0.9,steps=20"


def lm_moe_quick() -> Path:
    from evomerge.zoo.build import build

    return build("lm-moe", quick=True, progress=False) / "moe"


def calibration_file(folder: Path, lines: int = 64) -> Path:
    """The first ``lines`` calibration lines (the zoo's training mixture) as a file."""
    path = folder / f"calibration_{lines}.txt"
    path.write_text("\n".join(CALIB.read_text().splitlines()[:lines]) + "\n")
    return path


def moe_reduce_compressed(folder: Path, compress: str = COMPRESS) -> Path:
    """`evomerge moe-reduce` of the quick lm-moe to 4 experts by MC-SMoE with ``--compress``."""
    from typer.testing import CliRunner

    from evomerge.cli import app

    out = folder / "compressed"
    res = CliRunner().invoke(
        app,
        ["moe-reduce", str(lm_moe_quick()), str(out), "--method", "mc-smoe", "--keep", "4"]
        + ["--calibration", str(calibration_file(folder)), "--compress", compress],
    )
    assert res.exit_code == 0, res.output
    return out
