"""The docs a reader gets with a clone: no link leaves the repository, every relative link
resolves (a link to a heading finds it), and every `evomerge ...` command the README and docs
show is a real command with real options (the README's "Then:" block first puts the command on
PATH)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from evomerge.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _tracked_text() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    files = [ROOT / f for f in out.split()]
    return [f for f in files if f.suffix in (".md", ".py", ".yaml", ".sh", ".sbatch", "")]


def test_nothing_points_outside_the_repository():
    bad = []
    for f in _tracked_text():
        if f.is_file() and f.name != "test_docs.py":
            text = f.read_text(errors="ignore")
            if "../shared/" in text or "DESIGN.md" in text:
                bad.append(str(f.relative_to(ROOT)))
    assert not bad, bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def _heading_anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but `-`
    and `_` dropped, spaces to `-`, a repeated heading suffixed -1, -2, ..."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # a `# comment` is no heading
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_to_a_heading_find_it(doc):
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", doc.read_text()):
        linked = doc.parent / target if target else doc
        if "://" not in target and linked.suffix == ".md":
            assert anchor in _heading_anchors(linked), (
                f"{doc.name}: no heading for {target}#{anchor}"
            )


def _commands() -> dict[tuple[str, ...], set[str]]:
    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*prefix, name))
            else:
                opts = {o for p in cmd.params for o in p.opts if o.startswith("-")}
                required = {p.opts[0] for p in cmd.params if p.required and p.opts[0][0] == "-"}
                yield (*prefix, name), (opts, required)

    return dict(walk(typer.main.get_command(app), ()))


def _shown_commands(text: str) -> list[list[str]]:
    """Commands in fenced blocks and in inline code spans."""
    lines = [ln for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for ln in b.splitlines()]
    lines += re.findall(r"`(evomerge [^`]+)`", text)
    out = []
    for line in lines:
        line = line.split("  #", 1)[0].strip().rstrip("\\")
        if line.startswith("evomerge "):
            out.append(shlex.split(re.sub(r"[|\[\]]", " ", line)))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_shown_commands_exist_with_their_options(doc):
    commands = _commands()
    for words in _shown_commands(doc.read_text()):
        path = next((p for p in commands if tuple(words[1 : 1 + len(p)]) == p), None)
        assert path is not None, f"{doc.name}: no command {' '.join(words[:3])}"
        opts, required = commands[path]
        for w in words:
            if w.startswith("--"):
                assert w.split("=")[0] in opts, f"{doc.name}: {' '.join(words)}: {w}"
        if len(words) > 1 + len(path):  # a full command line, not a mention of the command
            missing = required - set(words)
            assert not missing, f"{doc.name}: {' '.join(words)} lacks {sorted(missing)}"


def test_then_block_puts_evomerge_on_path():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Then", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first = block.splitlines()[0]
    assert first.startswith("source .venv/bin/activate"), first
    assert re.search(
        r'^evomerge = "evomerge\.cli:app"', (ROOT / "pyproject.toml").read_text(), re.M
    )
    assert ".venv" in (ROOT / "scripts" / "setup.sh").read_text()
