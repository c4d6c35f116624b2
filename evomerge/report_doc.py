"""The report as a few blocks (heading, bullets, table, image, paragraph), written out twice:
GitHub-flavoured markdown for a pull request and standalone HTML for a browser.

Building blocks instead of converting markdown keeps the two in step without a markdown
library: inline text marks code with backticks, which markdown keeps and HTML turns into
``<code>``; table cells escape ``|`` for markdown and everything for HTML.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

_CODE = re.compile(r"`([^`]*)`")
_NUMERIC = re.compile(r"^[-+]?\d+(\.\d+)?$")


def code(text: str) -> str:
    """``text`` as an inline code span (a backtick inside would end it early)."""
    return "`" + str(text).replace("`", "'").replace("|", "/") + "`"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    src: str
    alt: str


@dataclass(frozen=True)
class Para:
    text: str


Block = Heading | Bullets | Table | Image | Para


# ---- markdown ---------------------------------------------------------------------------------
def to_markdown(blocks: list[Block]) -> str:
    parts = [_md(b) for b in blocks]
    return "\n\n".join(parts) + "\n"


def _md(b: Block) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + b.text
    if isinstance(b, Bullets):
        return "\n".join(f"- {item}" for item in b.items)
    if isinstance(b, Table):
        head = "| " + " | ".join(_md_cell(c) for c in b.header) + " |"
        rule = "|" + "|".join("---:" if _right(b, i) else "---" for i in range(len(b.header)))
        rows = ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
        return "\n".join([head, rule + "|", *rows])
    if isinstance(b, Image):
        return f"![{b.alt}]({b.src})"
    return b.text


def _md_cell(text: str) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|")


def _right(t: Table, col: int) -> bool:
    """Numbers align right: a column whose cells are numbers (or '-', 'FAIL') is numeric."""
    cells = [r[col] for r in t.rows if r[col] not in ("-", "FAIL")]
    return bool(cells) and all(_NUMERIC.match(c) for c in cells)


# ---- HTML -------------------------------------------------------------------------------------
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "code{background:#f5f5f5;padding:0 3px;border-radius:3px;word-break:break-word}"
    "th code,td:first-child{white-space:nowrap;word-break:normal}"
    "img{max-width:100%}"
)


def to_html(blocks: list[Block], title: str) -> str:
    body = "\n".join(_html(b) for b in blocks)
    return (
        "<!doctype html>\n<html lang=en>\n<head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def inline(text: str) -> str:
    """Escaped HTML of one line of report text, code spans as <code>."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _html(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{inline(b.text)}</h{b.level}>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        num = [_right(b, i) for i in range(len(b.header))]
        head = "".join(f"<th>{inline(c)}</th>" for c in b.header)
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=num' if n else ''}>{inline(c)}</td>"
                for c, n in zip(r, num, strict=True)
            )
            + "</tr>"
            for r in b.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(b, Image):
        return f'<p><img src="{html.escape(b.src)}" alt="{html.escape(b.alt)}"></p>'
    return f"<p>{inline(b.text)}</p>"
