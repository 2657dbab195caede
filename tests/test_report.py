"""``adept report``: a self-contained HTML page and its Markdown twin from a run directory."""

from __future__ import annotations

import re

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
