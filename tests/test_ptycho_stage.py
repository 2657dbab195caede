"""The ptycho stage: dynamic scan assignment over ranks, per-scan restart files, output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from hpc_adept.io import read_projections

from .conftest import adept

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 20, 20], "n_angles": 5,
                 "frame_size": 32, "seed": 5, "write_projections": False},
    "ptycho": {"iterations": 8},
    "runtime": {"device": "cpu"},
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ptycho")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work


def run_ptycho(work: Path, run_dir: str, n_ranks: int = 1):
    return adept("ptycho", "-c", "c.yaml", "--set", f"output.dir={run_dir}", cwd=work,
                 n_ranks=n_ranks)


def test_serial_output_and_restart(dataset):
    result = run_ptycho(dataset, "serial")
    assert result.returncode == 0, result.stderr[-3000:]
    ps = read_projections(dataset / "serial" / "projections.h5")
    assert ps.projections.shape[0] == 5
    assert list(ps.angles_deg) == [0.0, 72.0, 144.0, 216.0, 288.0]
    assert ps.extra["iterations"].tolist() == [8.0] * 5
    assert ps.probes is not None and ps.probes.shape == (5, 32, 32)
    # A crash after three scans: only the missing two are recomputed.
    cache = dataset / "serial" / "ptycho"
    kept = {p.name: p.stat().st_mtime_ns for p in sorted(cache.glob("scan_*.h5"))[:3]}
    for p in sorted(cache.glob("scan_*.h5"))[3:]:
        p.unlink()
    first = digest(dataset / "serial" / "projections.h5")
    (dataset / "serial" / "projections.h5").unlink()
    result = run_ptycho(dataset, "serial")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reused 3 finished scan(s)" in result.stderr
    assert {n: (cache / n).stat().st_mtime_ns for n in kept} == kept
    assert digest(dataset / "serial" / "projections.h5") == first
    # Other settings invalidate the kept results.
    result = adept("ptycho", "-c", "c.yaml", "--set", "output.dir=serial",
                   "ptycho.iterations=4", cwd=dataset)
    assert result.returncode == 0 and "reused" not in result.stderr


@pytest.mark.mpi
def test_two_ranks_identical_to_one(dataset):
    result = run_ptycho(dataset, "one")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_ptycho(dataset, "two", n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert digest(dataset / "two" / "projections.h5") == \
        digest(dataset / "one" / "projections.h5")


def test_missing_dataset_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("ptycho", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == \
        ["adept: error: data.path: directory not found: dataset"]
    assert not (tmp_path / "run").exists()
