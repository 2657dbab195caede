"""The repository's documentation: README.md and docs/*.md link only to files that exist.

A clone holds the repository alone, so nothing may send a reader to ``../shared/`` (the
development workspace's notes): the documentation lives in ``docs/``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
PAGES = ("README.md", "geometry.md", "formats.md", "cli.md", "run_directory.md",
         "architecture.md")

# Inline Markdown links and images: [text](target) / ![alt](target), target without spaces.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1\s*$", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", flags=re.S)


def _links(text: str) -> list[str]:
    """Targets of the Markdown links of ``text``, outside code blocks and code spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return _LINK.findall(text)


def _relative(target: str) -> str | None:
    """The path part of a relative link; None for a URL, a mail or a page anchor."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
        return None
    return target.split("#", 1)[0].split("?", 1)[0] or None


def test_the_docs_pages_exist():
    for page in PAGES:
        assert (REPO / "docs" / page).is_file(), page
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"({page})" in index, f"docs/README.md does not list {page}"


def test_link_parser():
    text = ("[a](docs/x.md) ![b](fig.png \"t\") [c](https://x.org) [d](#here) `[e](no.md)`\n"
            "```\n[f](nor.md)\n```\n[g [h]](y.md#sec)")
    assert [_relative(t) for t in _links(text)] == [
        "docs/x.md", "fig.png", None, None, "y.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_point_into_the_repository(doc):
    """Every relative link resolves to an existing file or folder inside the repository."""
    source = REPO / doc
    missing = []
    for target in _links(source.read_text(encoding="utf-8")):
        path = _relative(target)
        if path is None:
            continue
        resolved = (source.parent / path).resolve()
        if not resolved.is_relative_to(REPO.resolve()) or not resolved.exists():
            missing.append(target)
    assert not missing, f"{doc}: links to files not in the repository: {missing}"


def _tracked_files() -> list[Path]:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                              check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [REPO / name for name in done.stdout.decode().split("\0") if name]


def test_no_tracked_file_links_to_the_shared_folder():
    """No link (Markdown or HTML) into ../shared/, and no pointer to its design notes."""
    pattern = re.compile(r"\]\(\s*<?\.\./shared/|href=[\"']\.\./shared/"
                         r"|shared/(?:DESIGN|REFERENCE|FORMATS)\.md")
    offenders = []
    for path in _tracked_files():
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files (figures) hold no links
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, f"links to ../shared/: {offenders}"
