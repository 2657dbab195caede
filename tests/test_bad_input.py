"""Bad input stops the program before any work: exit code 2, one line, no output files.

Each case corrupts a copy of a small valid dataset (or the config) in one way and runs
``adept ptycho`` on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hpc_adept.io.cxi import DATA, DISTANCE, ENERGY, LAMINOGRAPHY, PROBE, ROTATION, TRANSLATION

from .conftest import adept

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [8, 16, 16], "n_angles": 3,
                 "frame_size": 16, "seed": 1, "write_projections": False},
    "ptycho": {"iterations": 2},
    "runtime": {"device": "cpu"},
}


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("valid")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work / "dataset"


def _edit(name: str, key: str, value: Callable) -> Callable[[Path], None]:
    """Replace dataset ``key`` of scan ``name`` by ``value(old array)``."""
    def apply(dataset: Path) -> None:
        with h5py.File(dataset / name, "r+") as f:
            old = np.asarray(f[key])
            del f[key]
            f[key] = value(old)
    return apply


def _delete(name: str, key: str) -> Callable[[Path], None]:
    def apply(dataset: Path) -> None:
        with h5py.File(dataset / name, "r+") as f:
            del f[key]
    return apply


def _truncate(dataset: Path) -> None:
    path = dataset / "scan_0001.cxi"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_hdf5(dataset: Path) -> None:
    (dataset / "scan_0002.cxi").write_text("this is not HDF5\n")


def _empty(dataset: Path) -> None:
    for path in dataset.glob("*.cxi"):
        path.unlink()


def _poke(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(counts: np.ndarray) -> np.ndarray:
        counts = counts.copy()
        counts[1, 3, 4] = value
        return counts
    return change


S1 = "scan_0001.cxi"
DATASET_CASES = {
    "no *.cxi files": (_empty, "holds no *.cxi files"),
    "truncated file": (_truncate, "scan_0001.cxi: not a readable HDF5 file"),
    "not HDF5": (_not_hdf5, "scan_0002.cxi: not a readable HDF5 file"),
    "missing energy": (_delete(S1, ENERGY), f"{ENERGY}"),
    "counts not 3-D": (_edit(S1, DATA, lambda c: c[0]), f"{DATA}"),
    "positions != frames": (_edit(S1, TRANSLATION, lambda t: t[:-1]),
                            "positions but the data has"),
    "NaN counts": (_edit(S1, DATA, _poke(np.nan)), "contains NaN or infinite values"),
    "negative counts": (_edit(S1, DATA, _poke(-5.0)), "contains negative counts"),
    "zero counts": (_edit(S1, DATA, lambda c: np.zeros_like(c)), "all counts are zero"),
    "duplicate angles": (_edit(S1, ROTATION, lambda a: np.float64(0.0)),
                         "have the same rotation angle 0 deg"),
    "non-positive distance": (_edit(S1, DISTANCE, lambda d: np.float64(-1.0)),
                              f"{DISTANCE}"),
    "probe larger than frame": (_edit(S1, PROBE, lambda p: np.pad(p, 4)), f"{PROBE}"),
    "inconsistent laminography": (_edit(S1, LAMINOGRAPHY, lambda a: np.float64(45.0)),
                                  "laminography angle 45 deg differs"),
    "non-square frames": (lambda d: [_edit(n.name, DATA, lambda c: c[:, :, :-2])(d) or
                                     _delete(n.name, PROBE)(d) for n in d.glob("*.cxi")],
                          "frames of 16 x 14 pixels are not supported"),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_bad_dataset(valid_dataset, tmp_path, case):
    corrupt, needle = DATASET_CASES[case]
    shutil.copytree(valid_dataset, tmp_path / "dataset")
    corrupt(tmp_path / "dataset")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    _assert_clean_failure(adept("ptycho", "-c", "c.yaml", cwd=tmp_path), needle, tmp_path)


CONFIG_CASES = {
    "unknown key": (["--set", "ptycho.iteratons=3"], "unknown config key ptycho.iteratons"),
    "wrong type": (["--set", "ptycho.iterations=many"], "ptycho.iterations"),
    "out of range": (["--set", "ptycho.iterations=0"], "ptycho.iterations must be > 0"),
    "missing data path": (["--set", "data.path=nowhere"], "data.path: directory not found"),
    "output not writable": (["--set", "output.dir=blocker/run"], "is not writable"),
    "bad enum": (["--set", "ptycho.noise_model=cauchy"], "ptycho.noise_model"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(valid_dataset, tmp_path, case):
    args, needle = CONFIG_CASES[case]
    shutil.copytree(valid_dataset, tmp_path / "dataset")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    _assert_clean_failure(adept("ptycho", "-c", "c.yaml", *args, cwd=tmp_path), needle,
                          tmp_path)


def test_bad_yaml_and_missing_config(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {path: [unclosed\n")
    _assert_clean_failure(adept("ptycho", "-c", "c.yaml", cwd=tmp_path), "c.yaml", tmp_path)
    _assert_clean_failure(adept("ptycho", "-c", "absent.yaml", cwd=tmp_path), "absent.yaml",
                          tmp_path)


@pytest.mark.mpi
def test_bad_counts_found_by_the_other_rank(valid_dataset, tmp_path):
    """Rank 1 checks the last scans: its finding ends both ranks with rank 0's one line."""
    shutil.copytree(valid_dataset, tmp_path / "dataset")
    _edit("scan_0002.cxi", DATA, _poke(np.inf))(tmp_path / "dataset")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("ptycho", "-c", "c.yaml", cwd=tmp_path, n_ranks=2)
    _assert_clean_failure(result, "scan_0002.cxi", tmp_path)


def _assert_clean_failure(result, needle: str, work: Path) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("adept: error: ") and needle in lines[0], lines[0]
    assert not (work / "run").exists()
