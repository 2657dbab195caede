"""``adept report``: a self-contained HTML page and its Markdown twin from a run directory."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.report.document import center_crop

from .conftest import adept

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 20, 20], "n_angles": 4,
                 "frame_size": 32, "seed": 3, "write_projections": False},
    "ptycho": {"iterations": 3},
    "recon": {"volume_shape": [12, 16, 16]},
    "runtime": {"device": "cpu"},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    for command in ("simulate", "ptycho", "recon"):
        result = adept(command, "-c", "c.yaml", cwd=work)
        assert result.returncode == 0, result.stderr[-2000:]
    return work / "run"


def test_report_sections_and_embedded_figures(run_dir):
    result = adept("report", str(run_dir), cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (run_dir / "report.html").read_text()
    for title in ("Timing breakdown", "Reconstructions", "Ptychography (LSQ-ML) convergence",
                  "Configuration"):
        assert f"<h2>{title}</h2>" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) >= 3 and all(len(i) > 1000 for i in images)
    assert "src='figures" not in page  # nothing outside the page
    # The timing table lists the stages measured by the commands.
    assert re.search(r"<td>ptycho</td>", page) and re.search(r"<td>recon</td>", page)
    markdown = (run_dir / "report.md").read_text()
    assert "| region | count | min s | mean s | max s |" in markdown
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (run_dir / link).is_file()
    # No alignment or DIP yet: those sections say so instead of failing.
    assert "No `aligned.h5`." in markdown and "No DIP loss history" in markdown


def test_report_bad_run_dir_is_one_line(tmp_path):
    result = adept("report", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"adept: error: report: run directory not found: {tmp_path / 'nowhere'}"]
    (tmp_path / "empty").mkdir()
    result = adept("report", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and "holds no results" in result.stderr
    assert not (tmp_path / "empty" / "report.html").exists()


def test_report_survives_a_corrupt_volume(run_dir, tmp_path):
    (run_dir / "volume_dip.h5").write_bytes(b"not hdf5")
    try:
        result = adept("report", str(run_dir), cwd=run_dir.parent)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Unreadable volume_dip.h5" in (run_dir / "report.md").read_text()
    finally:
        (run_dir / "volume_dip.h5").unlink()


def test_center_crop():
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    np.testing.assert_array_equal(center_crop(volume, (3, 2, 5)), volume[1:4, 2:4, 1:6])
    assert center_crop(volume, (6, 6, 7)) is None


def _chromium() -> str:
    """Path of a headless-capable Chromium, installed from Debian's packages if missing."""
    import os
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("headless browser test: no Chromium and no root/apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                           "chromium"], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"headless browser test: installing chromium failed: {done.stderr[-300:]}")
    return shutil.which("chromium")


def test_report_opens_in_headless_chromium(run_dir, tmp_path):
    """The page loads in a real browser, every embedded image decodes, nothing is fetched."""
    import subprocess

    browser = _chromium()
    result = adept("report", str(run_dir), cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    page = (run_dir / "report.html").read_text()
    probe = page.replace(
        "</body>",
        "<script>addEventListener('load', () => { const imgs = [...document.images];"
        " document.title = (imgs.length > 0 && imgs.every(i => i.complete &&"
        " i.naturalWidth > 0)) ? 'IMAGES-OK ' + imgs.length : 'IMAGES-BROKEN'; });"
        "</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-extensions", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", f"file://{tmp_path / 'probe.html'}"],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_images = len(re.findall(r"<img ", page))
    assert f"<title>IMAGES-OK {n_images}</title>" in dom.stdout, dom.stdout[:300]
    shot = tmp_path / "report.png"
    done = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,1600",
                           f"file://{run_dir / 'report.html'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 20_000, done.stderr[-2000:]


# ------------------------------------------------------------------- hostile run files

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
HOSTILE = (f"&nbsp;{SCRIPT}", IMG, f"ptycho/&nbsp;{SCRIPT}", f"recon/{IMG}",
           "a|b\nc`d`", "<b>bold</b>")
"""Strings a crafted run file may hold: markup, attribute break-outs, the old report's
``&nbsp;`` marker that skipped escaping, Markdown table and code delimiters."""


class _Page(HTMLParser):
    """Every start tag (with its attributes) and every text run of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "pre",
             "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption"}
PAGE_ATTRIBUTES = {"charset", "src", "alt", "class"}


def _hostile_run(run: Path, metrics: dict) -> Path:
    """A run directory whose every text-bearing file holds hostile strings."""
    from hpc_adept.io import write_volume

    run.mkdir(parents=True)
    write_volume(run / "volume_fbp.h5",
                 np.random.default_rng(2).random((6, 8, 8)).astype(np.float32), 1e-7)
    times = {"count": 1, "min_s": 1.0, "mean_s": 1.5, "max_s": 2.0}
    (run / "timing.json").write_text(json.dumps({
        "n_ranks": SCRIPT, "devices": [IMG, SCRIPT], "wall_s": 2.0,
        "run": {"n_nodes": IMG, "git_revision": SCRIPT, "slurm_job_id": "<i>x</i>"},
        "regions": {name: times for name in HOSTILE}, "stages": {"recon": times}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": {"path": SCRIPT}, "output": {"dir": IMG},
        "evaluate": {"reference": f"&nbsp;{SCRIPT}"}, "note": "```\n<b>x</b>\n```"}))
    (run / "dip_history.json").write_text(json.dumps({"loss": [3.0, 2.0], SCRIPT: IMG}))
    (run / "figures").mkdir()
    (run / "figures" / f"{IMG}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"<script>")
    return run


HOSTILE_METRICS = {
    "names": {"methods": {name: {"ber": 0.1, "pcc": 0.9, "ranges": {
        other: {"ber": 0.2, "pcc": 0.8} for other in HOSTILE}} for name in HOSTILE}},
    "string values": {"methods": {"fbp": {"ber": SCRIPT, "pcc": IMG}}},
    "string ranges": {"fbp": {"ber": 0.1, "pcc": 0.9, "ranges": {SCRIPT: {"ber": IMG}}}},
    "circuit names": {"fbp": {"ber": 0.1, "pcc": 0.9, "circuit": {
        "labels": SCRIPT, "opens": 1, "shorts": 2, "missing": 0, "spurious": 0,
        "via_recall": 0.5, "layers": {SCRIPT: {"opens": 1, "shorts": 0}},
        "vias": {IMG: {"vias": 2, "recovered": 1, "recall": 0.5, "precision": 1.0}}}}},
    "circuit values": {"fbp": {"ber": 0.1, "pcc": 0.9, "circuit": {
        "labels": "ground truth", "opens": SCRIPT, "shorts": IMG}}},
}


def _assert_inert_html(page: str, n_figures: int) -> str:
    """Only the report's own tags and attributes; returns the page's text."""
    parser = _Page()
    parser.feed(page)
    parser.close()
    tags = [tag for tag, _ in parser.tags]
    assert set(tags) <= PAGE_TAGS, set(tags) - PAGE_TAGS
    assert tags.count("img") == n_figures
    for tag, attrs in parser.tags:
        assert set(attrs) <= PAGE_ATTRIBUTES, (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:80]
    lowered = page.lower()
    assert "<script" not in lowered and "<img src=x" not in lowered and "<b>" not in lowered
    return "".join(parser.text)


@pytest.mark.parametrize("case", list(HOSTILE_METRICS))
def test_hostile_run_files_cannot_inject_markup(tmp_path, case):
    """Names and values read from the run's files are text on the page, never markup."""
    from hpc_adept.report.document import write_report

    run = _hostile_run(tmp_path / '"><i>run', HOSTILE_METRICS[case])
    html_path, md_path = write_report(run)
    page = html_path.read_text()
    n_figures = len(re.findall(r"<figure>", page))
    assert n_figures >= 3  # timing, orthoslices, DIP loss, the stage figure
    text = _assert_inert_html(page, n_figures)
    # The hostile strings are shown, escaped, as text (whitespace aside).
    flat = " ".join(text.split())
    for needle in (SCRIPT, IMG, "&nbsp;" + SCRIPT, '"><i>run'):
        assert needle in flat, needle
    if case == "names":
        assert "<B>BOLD</B>" in flat  # method names are upper-cased
    # Markdown: no raw HTML, no broken table rows, no code fence left open.
    markdown = md_path.read_text()
    # A fenced block is literal text in Markdown: its fence must outlast the backticks in
    # the content (config.yaml holds a ``` line), and markup inside it is inert.
    fenced = re.compile(r"^(`{3,})yaml\n.*?^\1$", flags=re.M | re.S)
    assert len(fenced.findall(markdown)) == 1 and "<b>x</b>" in fenced.search(markdown)[0]
    markdown = fenced.sub("", markdown)
    lowered = markdown.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<b>" not in lowered
    for table in re.findall(r"((?:^\|.*\|$\n?)+)", markdown, flags=re.M):
        rows = table.strip().splitlines()
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, rows
    assert not re.search(r"^`{3,}", markdown, flags=re.M)


CIRCUIT = {"labels": "ground truth", "opens": 4, "shorts": 1, "missing": 0, "spurious": 2,
           "vi_split_bits": 0.352, "vi_merge_bits": 0.484, "via_recall": 0.9,
           "layers": {"metal1": {"opens": 0, "shorts": 1, "missing": 0, "spurious": 0},
                      "metal2": {"opens": 2, "shorts": 0, "missing": 0, "spurious": 1}},
           "vias": {"via1": {"vias": 5, "recovered": 4, "recall": 0.8, "precision": 0.333},
                    "via4": {"vias": 0, "recovered": 0, "recall": None, "precision": None}}}


def test_report_shows_the_circuit_table_and_figure(tmp_path):
    from hpc_adept.report.circuit_plots import save_circuit_errors
    from hpc_adept.report.document import write_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "fbp": {"ber": 0.01, "pcc": 0.9, "circuit": CIRCUIT},
        "dip": {"ber": 0.02, "pcc": 0.95, "circuit": {**CIRCUIT, "opens": 1, "via_recall": None,
                                                      "labels": "<b>x</b>"}}}))
    metal = np.zeros((4, 12, 12), bool)
    metal[1, 2:10, 5] = True
    panel = {"metal": metal, "truth": metal, "layers": {"metal1": (1, 2)},
             "sites": {"opens": [(1, 6, 5)], "missed_vias": [(1, 3, 5)]}}
    assert save_circuit_errors(run / "figures" / "circuit_errors.png", {"fbp": panel}) \
        is not None
    assert save_circuit_errors(run / "figures" / "none.png",
                               {"fbp": {**panel, "sites": {}}}) is None
    html_path, md_path = write_report(run)
    page = html_path.read_text()
    assert "<h2>Circuit</h2>" in page
    assert ("<tr><td>FBP</td><td>ground truth</td><td>4</td><td>1</td><td>0</td><td>2</td>"
            "<td>0.352</td><td>0.484</td><td>0.900</td></tr>") in page
    assert "<td>DIP</td><td>&lt;b&gt;x&lt;/b&gt;</td><td>1</td>" in page  # escaped
    assert "<td>n/a</td></tr>" in page  # the DIP's undefined via recall
    markdown = md_path.read_text()
    assert "|   via1 | - | - | - | - | 4 / 5 | 0.800 | 0.333 |" in markdown
    assert "via4" not in markdown  # a cut layer without vias
    assert "|   metal2 | 2 | 0 | 0 | 1 | - | - | - |" in markdown
    assert "![Circuit errors" in markdown and "none.png" not in markdown


def test_only_real_png_files_are_embedded(tmp_path):
    """A figure or config.yaml linked to another file, or a figure that is no PNG, is not
    copied into the page."""
    import base64

    from hpc_adept.report.document import write_report

    run = _hostile_run(tmp_path / "run", HOSTILE_METRICS["string values"])
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n private key material")
    (run / "figures" / "linked.png").symlink_to(secret)
    (run / "figures" / "text.png").write_text("not an image")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(secret)
    page = write_report(run)[0].read_text()
    assert "private key" not in page
    assert "Unreadable config.yaml: a symbolic link" in page
    assert "linked.png" not in page and "text.png" not in page
    assert base64.b64encode(secret.read_bytes()).decode()[:16] not in page
    assert f"{IMG}.png" in html.unescape(page)  # a regular PNG file is shown


def _aligned_run(run: Path, history: dict | None) -> Path:
    """A run directory with ``aligned.h5`` (an extended sample's) and ``history`` as its
    ``align_history.json``."""
    from hpc_adept.io import ProjectionSet, write_projections

    run.mkdir(parents=True)
    n = 8
    shifts = np.random.default_rng(4).normal(0.0, 1.0, (n, 2))
    write_projections(run / "aligned.h5", ProjectionSet(
        np.zeros((n, 6, 6), np.float32), np.linspace(0.0, 315.0, n), 61.0, 1e-8,
        extra={"shifts_px": shifts}, sample_kind="extended"))
    if history is not None:
        (run / "align_history.json").write_text(json.dumps(history))
    return run


def _alignment_text(run: Path) -> str:
    from hpc_adept.report.document import section_alignment

    section = section_alignment(run, {})
    return " ".join(template.format(*values) for kind, (template, values) in section.blocks
                    if kind == "text")


CHECK = {"pattern_px": 0.5, "harmonics": [2, 3], "smooth_distance": 0.82,
         "along_pattern": 0.78, "other_px": 0.1, "determined": False, "iterations": 50,
         "seconds": 110.0}


def test_alignment_section_says_how_far_the_shifts_hold(tmp_path):
    """The report tells a user what ``adept align`` found about its own shifts: the kind of
    sample, how one-way the structure is, and the smooth-pattern check's verdict."""
    failed = _alignment_text(_aligned_run(tmp_path / "failed",
                                          {"structure_ratio": 0.08, "smooth_check": CHECK}))
    assert "Sample: extended" in failed
    assert "ratio 0.08 (mostly one way" in failed
    assert "stopped 0.82 times the pattern" in failed and "NOT taken back" in failed
    held = _alignment_text(_aligned_run(tmp_path / "held", {
        "structure_ratio": 0.41,
        "smooth_check": {**CHECK, "smooth_distance": 0.09, "determined": True}}))
    assert "structure in both directions" in held and "stopped 0.09 times" in held
    assert "NOT taken back" not in held and "taken back: the method holds" in held
    assert "wrong match" not in held
    outlier = _alignment_text(_aligned_run(tmp_path / "outlier", {
        "structure_ratio": 0.19, "outlier_angles": [6], "smooth_check": CHECK}))
    assert "1 of 8 projections (indices 6) ended the last iteration at 3 times" in outlier
    assert "wrong match" in outlier and "searched again" not in outlier
    moved = _alignment_text(_aligned_run(tmp_path / "moved", {
        "reregistered_angles": [2, 5], "outlier_angles": [], "smooth_check": CHECK}))
    assert "2 of 8 projections (indices 2, 5) ended the last level at 3 times" in moved
    assert "searched again and moved" in moved and "not to be trusted" not in moved
    assert "layer stack" not in moved
    placed = _alignment_text(_aligned_run(tmp_path / "placed", {
        "stack_offset_um": -0.0172, "placed_on_stack": True, "smooth_check": CHECK}))
    assert "layers sat -0.0172 um along z from it; the shifts keep" in placed
    from hpc_adept.report.document import write_report

    markdown = write_report(tmp_path / "placed")[1].read_text()
    assert "stack's heights (`align.place_on_stack`)." in markdown  # code, not escaped
    kept = _alignment_text(_aligned_run(tmp_path / "kept", {
        "stack_offset_um": 0.0172, "smooth_check": CHECK}))  # a record from before
    assert "sat +0.0172 um" in kept and "lowering `align.layer_base_um`" in kept
    unchecked = _alignment_text(_aligned_run(tmp_path / "off", {"smooth_check": None,
                                                               "structure_ratio": None}))
    assert "No smooth-pattern check" in unchecked and "eigenvalue" not in unchecked
    assert "No `align_history.json`" in _alignment_text(_aligned_run(tmp_path / "none", None))
    off = _alignment_text(_aligned_run(tmp_path / "disabled", {"enabled": False,
                                                                "smooth_check": None}))
    assert "alignment was off" in off and "smooth-pattern" not in off


@pytest.mark.parametrize("history, reason", [
    ({"structure_ratio": "0.1"}, "structure_ratio is not a number in [0, 1]"),
    ({"structure_ratio": 1.5}, "structure_ratio is not a number in [0, 1]"),
    ({"structure_ratio": float("nan")}, "structure_ratio is not a number"),
    ({"smooth_check": [1, 2]}, "smooth_check is a list"),
    ({"outlier_angles": "13"}, "outlier_angles is not a list of projection indices"),
    ({"outlier_angles": [True]}, "outlier_angles is not a list of projection indices"),
    ({"outlier_angles": [-1, 2.5]}, "outlier_angles is not a list of projection indices"),
    ({"outlier_angles": ["<b>1</b>"]}, "outlier_angles is not a list"),
    ({"outlier_angles": [8]}, "outlier_angles is not a list of projection indices"),
    ({"reregistered_angles": [0, 8]}, "reregistered_angles is not a list of projection"),
    ({"reregistered_angles": {"13": 1}}, "reregistered_angles is not a list"),
    ({"stack_offset_um": "0.1"}, "stack_offset_um is not a number in [-100, 100]"),
    ({"stack_offset_um": -1e9}, "stack_offset_um is not a number in [-100, 100]"),
    ({"stack_offset_um": 0.01, "placed_on_stack": "yes"}, "placed_on_stack is not true or"),
    ({"stack_offset_um": True}, "stack_offset_um is not a number in [-100, 100]"),
    ({"stack_offset_um": float("nan")}, "stack_offset_um is not a number in [-100, 100]"),
    ({"smooth_check": {**CHECK, "smooth_distance": "<b>1</b>"}},
     "smooth_check.smooth_distance is not a number"),
    ({"smooth_check": {**CHECK, "smooth_distance": 2 ** 1100}},
     "smooth_check.smooth_distance is not a number"),
    ({"smooth_check": {**CHECK, "smooth_distance": float("inf")}},
     "smooth_check.smooth_distance is not a number"),
    ({"smooth_check": {**CHECK, "pattern_px": True}}, "smooth_check.pattern_px"),
    ({"smooth_check": {**CHECK, "pattern_px": -0.5}}, "smooth_check.pattern_px"),
    ({"smooth_check": {**CHECK, "determined": "no"}}, "determined is not true or false"),
    ({"smooth_check": {k: v for k, v in CHECK.items() if k != "determined"}},
     "determined is not true or false"),
    ({"smooth_check": {**CHECK, "determined": True}}, "determined contradicts its distance"),
])
def test_alignment_section_refuses_a_corrupt_history(tmp_path, history, reason):
    """A history file whose values make no sense is one note in the report, not a verdict;
    the shifts from ``aligned.h5`` are still shown."""
    from hpc_adept.report.document import write_report

    run = _aligned_run(tmp_path / "run", history)
    html_path, md_path = write_report(run)
    markdown = md_path.read_text()
    text = _alignment_text(run)
    assert "Unreadable align_history.json: " in text and reason in text
    assert "taken back" not in markdown and "median eigenvalue ratio" not in markdown
    assert "8 projections; RMS shift" in markdown and "Sample: extended" in markdown
    assert "<b>" not in html_path.read_text()
