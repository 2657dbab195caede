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
