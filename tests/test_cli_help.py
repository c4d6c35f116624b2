"""The command line as a user meets it: every option of every command described in --help,
required ones marked, flags shown and taken as plain flags, and a value after a flag one line
that says so (exit 2, no traceback). Also ``evomerge list`` and the preset lookup's error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from evomerge.catalog import CATEGORIES
from evomerge.cli import app


def _commands(group=None, prefix=()):
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


COMMANDS = dict(_commands())


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evomerge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _entry(help_text: str, label: str) -> str:
    """The lines of one option's or argument's entry in plain --help output."""
    lines = help_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().split(" ")[0].rstrip(",") == label)
    block = [lines[start]]
    for ln in lines[start + 1 :]:
        if not ln.startswith("    "):  # the next entry (two spaces) or a blank line
            break
        block.append(ln)
    return " ".join(block)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_is_described_and_required_ones_say_so(path):
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output, res.output
    for p in COMMANDS[path].params:
        assert (p.help or "").strip(), f"evomerge {' '.join(path)}: {p.name} has no help"
        label = p.opts[-1] if p.param_type_name == "option" else p.metavar
        entry = _entry(res.output, label)
        assert ("[required]" in entry) == bool(p.required), entry
        if getattr(p, "is_flag", False):
            assert "<" not in entry.split(p.help.split()[0])[0], entry  # no value placeholder


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["search", "exp.yaml"], "Missing option '--run-dir'"),
        (["search", "exp.yaml", "--run-dir", "r", "--max-evals", "many"], "'--max-evals'"),
        (["export", "run", "--out", "w.yaml", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_mistakes_are_one_line(args, says, tmp_path):
    p = _cli(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], p.stderr
    assert f"see evomerge {args[0]} --help" in lines[0]


@pytest.mark.parametrize("form", [["--allow-pickle", "true"], ["--allow-pickle=true"]])
def test_a_value_after_a_flag_is_one_clear_line(form, tmp_path):
    p = _cli("merge", str(tmp_path / "cfg.yaml"), *form, "--out", str(tmp_path / "out"))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--allow-pickle is a flag" in lines[0] and "alone" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_flag_alone_is_accepted(tmp_path):
    # the flag parses; the missing config is what the command then reports
    p = _cli("merge", str(tmp_path / "missing.yaml"), "--allow-pickle", "--out", str(tmp_path))
    assert p.returncode == 2 and "is a flag" not in p.stderr and "missing.yaml" in p.stderr


def test_list_prints_every_category():
    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split(" ", 1)[0] for ln in lines] == list(CATEGORIES)
    text = res.output
    for name in ("cma_es", "m2n2", "frank_wolfe", "dare_ties", "fw_pool", "ps_dare_ties", "skills"):
        assert name in text
    one = CliRunner().invoke(app, ["list", "presets"])
    assert one.exit_code == 0 and one.output.startswith("presets") and "ps_linear" in one.output


def test_list_unknown_category_is_one_line():
    p = _cli("list", "nope")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "drivers" in p.stderr


def test_unknown_preset_lists_only_presets(tmp_path):
    """The experiment's folder is searched for presets; the experiments in it are not presets."""
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return 0.0\n")
    exp = tmp_path / "my_experiment.yaml"
    exp.write_text(
        "models: [zoo:lm-skills/cipher]\nspace: nope\nfitness: {python: score.py:score}\n"
        "budget: {max_evals: 2}\n"
    )
    (tmp_path / "my_space.yaml").write_text("kind: parameter\nmerge_method: linear\n")
    p = _cli("search", str(exp), "--run-dir", str(tmp_path / "run"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "my_space" in p.stderr and "ps_dare_ties" in p.stderr
    assert "my_experiment" not in p.stderr
