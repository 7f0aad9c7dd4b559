"""A report as a list of blocks, rendered once as Markdown and once as a self-contained HTML page
(PNG figures embedded as base64), so the two always say the same thing.

Inline text may use `code` and **bold**; nothing else is interpreted.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: str  # relative to the report folder
    caption: str


Block = Heading | Para | Bullets | Table | Figure


_TABLE_RULE = re.compile(r"\|(:?-+:?\|)+")  # the rule row, spaces removed


def _pipe_table(lines: list[str]) -> Table | None:
    """A Markdown pipe table (a header row, a `|---|` rule, then rows), or None if `lines` are not
    one; `\\|` inside a cell is a literal bar."""
    if len(lines) < 2 or not all(ln.startswith("|") for ln in lines):
        return None
    if not _TABLE_RULE.fullmatch(lines[1].replace(" ", "")):
        return None

    def cells(line: str) -> list[str]:
        inner = line.strip().removeprefix("|").removesuffix("|")
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]

    return Table(cells(lines[0]), [cells(ln) for ln in lines[2:]])


def parse_markdown(text: str) -> list[Block]:
    """Blocks from plain Markdown: `#` headings, `- ` bullet lists, pipe tables and paragraphs,
    separated by blank lines, except that a list may start right under its lead-in paragraph
    (a reading written by hand, placed in a generated report)."""
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.strip() for ln in chunk.splitlines() if ln.strip()]
        if not lines:
            continue
        if lines[0].startswith("#"):
            marks = len(lines[0]) - len(lines[0].lstrip("#"))
            blocks.append(Heading(lines[0][marks:].strip(), marks))
            lines = lines[1:]
        table = _pipe_table(lines)
        if table is not None:
            blocks.append(table)
            continue
        # A list may follow its lead-in paragraph without a blank line, as Markdown allows.
        first_item = next((i for i, ln in enumerate(lines) if ln.startswith("- ")), len(lines))
        if first_item:
            blocks.append(Para(" ".join(lines[:first_item])))
        if first_item < len(lines):
            items: list[str] = []
            for ln in lines[first_item:]:
                if ln.startswith("- "):
                    items.append(ln[2:])
                else:  # a continuation line of the item above
                    items[-1] += " " + ln
            blocks.append(Bullets(items))
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            lines = [
                "| " + " | ".join(map(_md_cell, b.header)) + " |",
                "|" + "---|" * len(b.header),
            ]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 13px; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def to_html(blocks: list[Block], root: Path, title: str) -> str:
    """One HTML file with every figure read from `root` and embedded."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(b.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
