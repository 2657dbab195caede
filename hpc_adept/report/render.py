"""The report's content model (:class:`Section`) and its two renderings, HTML and Markdown.

Everything a section holds may come from the run directory's files, which are untrusted
(a crafted ``timing.json`` region name, a method name in ``metrics.json``, a string in
``config.yaml``, a figure's file name). So nothing is ever inserted as markup:

* HTML goes through a Jinja2 template with autoescaping on, and no value is marked safe;
  indentation is a CSS class. Only the figures' PNG bytes, base64-encoded here, become an
  attribute (``src``), and they are escaped like the rest.
* Markdown values are neutralised: backslash-escaped ``\\ ` | [ ]``, ``&`` and ``<`` as
  entities (no raw HTML), newlines folded into spaces (no broken table rows), and code
  blocks fenced with more backticks than their content holds.

Text blocks separate the code's own wording (a ``str.format`` template with ``{}``
placeholders, which may hold Markdown such as backticks) from the values put into it.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MAX_INDENT = 3
"""Deepest table-row indentation the page's CSS has a class for."""


@dataclass
class Section:
    """One part of the report: a title, paragraphs, tables and figures, in order.

    ``title`` and the ``template`` of :meth:`text` are the code's own words; every other
    argument may come from a run file and is escaped by the renderers.
    """

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def text(self, template: str, *values: Any) -> Section:
        """A paragraph: ``template`` with its ``{}`` placeholders filled by ``values``."""
        self.blocks.append(("text", (template, values)))
        return self

    def table(self, header: list[str], rows: list[list[Any]],
              indent: list[int] | None = None) -> Section:
        """A table; ``indent[i]`` (0..3) indents row i's first cell (a sub-entry)."""
        levels = [0] * len(rows) if indent is None else list(indent)
        self.blocks.append(("table", (header, rows, levels)))
        return self

    def figure(self, path: Path, caption: str) -> Section:
        self.blocks.append(("figure", (path, caption)))
        return self

    def code(self, value: str) -> Section:
        self.blocks.append(("code", value))
        return self


# ------------------------------------------------------------------------------ HTML


@lru_cache(maxsize=1)
def _template():
    """The page template, with autoescaping on for every value."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("hpc_adept.report", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


def _html_block(kind: str, value: Any) -> dict[str, Any]:
    """One block as plain strings for the template (the template escapes them)."""
    if kind == "text":
        template, values = value
        return {"kind": kind, "text": template.format(*values) if values else template}
    if kind == "code":
        return {"kind": kind, "text": str(value)}
    if kind == "table":
        header, rows, levels = value
        return {"kind": kind, "header": [str(h) for h in header],
                "rows": [{"indent": max(0, min(int(level), MAX_INDENT)),
                          "cells": [str(c) for c in row]}
                         for row, level in zip(rows, levels, strict=True)]}
    path, caption = value
    return {"kind": "figure", "caption": str(caption),
            "data": base64.b64encode(Path(path).read_bytes()).decode("ascii")}


def render_html(title: str, sections: list[Section]) -> str:
    """The self-contained page: figures embedded as base64 PNGs, every value escaped."""
    context = [{"title": sec.title, "blocks": [_html_block(k, v) for k, v in sec.blocks]}
               for sec in sections]
    return _template().render(title=title, sections=context)


# ------------------------------------------------------------------------------ Markdown

_MD_ESCAPES = {"\\": "\\\\", "`": "\\`", "|": "\\|", "[": "\\[", "]": "\\]",
               "&": "&amp;", "<": "&lt;"}
_MD_SPECIAL = re.compile(r"[\\`|\[\]&<]")
_MD_BLOCK_MARKERS = ("#", ">", "-", "+", "=", "*")
_NEWLINES = re.compile(r"[\r\n\u2028\u2029]+")


def md_inline(value: Any) -> str:
    """``value`` as inert Markdown text on one line (for table cells and captions)."""
    text = _NEWLINES.sub(" ", str(value))
    return _MD_SPECIAL.sub(lambda m: _MD_ESCAPES[m.group(0)], text)


def _md_fence(text: str) -> str:
    """A backtick fence longer than any backtick run in ``text`` (CommonMark)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_table(header: list[str], rows: list[list[Any]], levels: list[int]) -> list[str]:
    lines = ["| " + " | ".join(md_inline(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    for row, level in zip(rows, levels, strict=True):
        cells = [md_inline(c) for c in row]
        if cells and level:
            cells[0] = "  " * min(int(level), MAX_INDENT) + cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _md_block(kind: str, value: Any, run_dir: Path) -> list[str]:
    if kind == "text":
        template, values = value
        text = template.format(*map(md_inline, values)) if values else template
        if values and template.startswith("{}") and text[:1] in _MD_BLOCK_MARKERS:
            text = "\\" + text  # a value opening the paragraph must not make it a heading
        return [text, ""]
    if kind == "code":
        fence = _md_fence(str(value))
        return [f"{fence}yaml", str(value).rstrip(), fence, ""]
    if kind == "table":
        return _md_table(*value)
    path, caption = value
    rel = Path(path).resolve().relative_to(run_dir.resolve())
    caption = md_inline(caption)
    return [f"![{caption}]({urllib.parse.quote(rel.as_posix())})", "", f"*{caption}*", ""]


def render_markdown(title: str, sections: list[Section], run_dir: Path) -> str:
    """The Markdown twin of the page; figures are links to ``run_dir/figures/*.png``."""
    lines = [f"# {md_inline(title)}", ""]
    for sec in sections:
        lines += [f"## {md_inline(sec.title)}", ""]
        for kind, value in sec.blocks:
            lines += _md_block(kind, value, run_dir)
    return "\n".join(lines)
