"""Bad input files (scans, layouts, restart and run files) and oversized settings stop the
program with one ``adept: error:`` line naming the file, exit code 2 and no partial output.

The commands run in-process (``hpc_adept.cli.main``) on copies of one small simulated
dataset, so that each case takes a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hpc_adept.cli import main
from hpc_adept.errors import DataError
from hpc_adept.io import read_cxi, read_projections
from hpc_adept.io.cxi import INCOMPLETE_MARKER, LAMINOGRAPHY, MASK, PROBE, TRANSLATION

CONFIG = {
    "data": {"path": "ds"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [8, 16, 16], "n_angles": 3,
                 "frame_size": 16, "seed": 1, "write_projections": False},
    "ptycho": {"iterations": 2},
    "align": {"crop_shape": [16, 16], "binning": [1], "max_iterations": 2,
              "coarse_rounds": 1},
    "recon": {"methods": ["fbp"], "volume_shape": [8, 16, 16]},
    "dip": {"iterations": 1, "in_channels": 2, "channels": [2, 4], "strides": [2, 1]},
    "runtime": {"device": "cpu"},
}


def adept_in(work: Path, *args: str, config: dict | None = None) -> int:
    """Run ``adept ARGS -c c.yaml`` in ``work`` (in-process); the exit code.

    An error during the work ends the job (``SystemExit``), one before it returns 2.
    """
    (work / "c.yaml").write_text(yaml.safe_dump(config or CONFIG))
    cwd = Path.cwd()
    try:
        os.chdir(work)
        return main([*args, "-c", "c.yaml"])
    except SystemExit as exc:
        return int(exc.code)
    finally:
        os.chdir(cwd)


def assert_one_error_line(capsys, code: int, *needles: str) -> str:
    """Exit code 2 and exactly one ``adept: error:`` line holding every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adept: error")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """A work directory with a small dataset ``ds`` and a finished ``run/ptycho``."""
    work = tmp_path_factory.mktemp("files")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert adept_in(work, "simulate") == 0
        assert adept_in(work, "ptycho") == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return work


@pytest.fixture
def work(simulated, tmp_path) -> Path:
    """A fresh copy of the dataset (no run directory)."""
    shutil.copytree(simulated / "ds", tmp_path / "ds")
    return tmp_path


def _set(path: Path, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        del f[key]
        f[key] = value


# --------------------------------------------------------------------------- CXI scans


def test_all_zero_probe_is_refused_before_work(work, capsys):
    scan = work / "ds" / "scan_0001.cxi"
    with h5py.File(scan, "r") as f:
        shape = f[PROBE].shape
    _set(scan, PROBE, np.zeros(shape, np.complex64))
    with pytest.raises(DataError, match="probe is all zero"):
        read_cxi(scan, load_counts=False)
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "scan_0001.cxi", PROBE, "all zero")
    assert not (work / "run").exists()


def test_fully_masked_detector_is_refused_before_work(work, capsys):
    scan = work / "ds" / "scan_0002.cxi"
    with h5py.File(scan, "r") as f:
        shape = f[PROBE].shape
    with h5py.File(scan, "r+") as f:
        if MASK in f:
            del f[MASK]
        f[MASK] = np.ones(shape, np.uint8)
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "scan_0002.cxi", MASK, "every detector pixel")
    assert not (work / "run").exists()


@pytest.mark.parametrize("tilt", [0.0, -400.0, 90.5])
def test_laminography_angle_out_of_range_is_refused(work, capsys, tilt):
    for scan in (work / "ds").glob("*.cxi"):  # every scan, so they agree with each other
        _set(scan, LAMINOGRAPHY, np.float64(tilt))
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "scan_0000.cxi", LAMINOGRAPHY, "(0, 90]")
    assert not (work / "run").exists()


def test_projections_tilt_attribute_out_of_range_is_refused(simulated, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    shutil.copy(simulated / "run" / "projections.h5", tmp_path / "run")
    with h5py.File(tmp_path / "run" / "projections.h5", "r+") as f:
        f.attrs["tilt_deg"] = 0.0
    with pytest.raises(DataError, match="tilt_deg"):
        read_projections(tmp_path / "run" / "projections.h5")
    code = adept_in(tmp_path, "align")
    assert_one_error_line(capsys, code, "projections.h5", "tilt_deg", "(0, 90]")
    assert not (tmp_path / "run" / "aligned.h5").exists()


@pytest.mark.parametrize("entry", ["dangling", "loop", "directory"])
def test_unreadable_cxi_entry_is_refused(work, capsys, entry):
    target = work / "ds" / "scan_0003.cxi"
    if entry == "dangling":
        target.symlink_to(work / "unmounted" / "scan_0003.cxi")
    elif entry == "loop":
        target.symlink_to(target)
    else:
        target.mkdir()
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "scan_0003.cxi")
    assert not (work / "run").exists()


# --------------------------------------------------------------------------- run files


def _junk(path: Path) -> None:
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"junk" * 64)


def _no_projections(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["projections"]


def _flat_projections(path: Path) -> None:
    _set(path, "projections", np.zeros((3, 16), np.float32))


@pytest.mark.parametrize("corrupt", [_junk, _no_projections, _flat_projections])
def test_dip_memory_guard_reads_aligned_h5_safely(simulated, tmp_path, capsys, corrupt):
    (tmp_path / "run").mkdir()
    aligned = tmp_path / "run" / "aligned.h5"
    shutil.copy(simulated / "run" / "projections.h5", aligned)
    corrupt(aligned)
    config = {**CONFIG, "recon": {**CONFIG["recon"], "methods": ["fbp", "dip"]}}
    code = adept_in(tmp_path, "recon", config=config)
    assert_one_error_line(capsys, code, "aligned.h5")
    assert not list((tmp_path / "run").glob("volume_*.h5"))


def _no_phase(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["phase"]


def _nan_phase(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["phase"][0, 0] = np.nan


def _no_iterations(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f.attrs["iterations"]


def _errors_cut(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["fourier_error"]
        f["fourier_error"] = np.zeros(0)


@pytest.mark.parametrize("corrupt", [_no_phase, _nan_phase, _no_iterations, _errors_cut,
                                     _junk])
def test_invalid_restart_file_is_recomputed(simulated, tmp_path, corrupt):
    shutil.copytree(simulated / "ds", tmp_path / "ds")
    shutil.copytree(simulated / "run", tmp_path / "run")
    (tmp_path / "run" / "projections.h5").unlink()
    damaged = tmp_path / "run" / "ptycho" / "scan_0001.h5"
    kept = (tmp_path / "run" / "ptycho" / "scan_0002.h5").stat().st_mtime_ns
    corrupt(damaged)
    assert adept_in(tmp_path, "ptycho") == 0
    ps = read_projections(tmp_path / "run" / "projections.h5")
    assert np.isfinite(ps.projections).all() and ps.n_angles == 3
    with h5py.File(damaged, "r") as f:  # the scan was computed again
        assert np.isfinite(f["phase"][()]).all() and int(f.attrs["iterations"]) == 2
    assert (tmp_path / "run" / "ptycho" / "scan_0002.h5").stat().st_mtime_ns == kept


# --------------------------------------------------------------------------- ptycho field


def test_outlier_position_is_refused(work, capsys):
    scan = work / "ds" / "scan_0001.cxi"
    with h5py.File(scan, "r+") as f:
        f[TRANSLATION][1, 0] = 5e-3  # 5 mm: a unit or encoder error
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "scan_0001.cxi", TRANSLATION, "position 1",
                          "far outside")
    assert not (work / "run").exists()


@pytest.fixture
def two_gib(monkeypatch) -> None:
    """Every memory guard sees 2 GiB available, whatever this machine has."""
    monkeypatch.setattr("hpc_adept.backend.available_memory_bytes",
                        lambda device, local_size: (2 * 2**30, "the test's budget"))


def test_projection_field_beyond_memory_is_refused(work, capsys, two_gib):
    config = {**CONFIG, "ptycho": {**CONFIG["ptycho"], "projection_shape": [8192, 8192]}}
    code = adept_in(work, "ptycho", config=config)
    assert_one_error_line(capsys, code, "ptycho: needs about", "GiB")
    assert not (work / "run").exists()


# --------------------------------------------------------------------------- layouts

TINY_LEF = """VERSION 5.8 ;
UNITS
  DATABASE MICRONS 1000 ;
END UNITS
LAYER metal1
  TYPE ROUTING ;
  DIRECTION HORIZONTAL ;
  WIDTH 0.07 ;
  THICKNESS 0.13 ;
  HEIGHT 0.37 ;
END metal1
END LIBRARY
"""
TINY_DEF = """VERSION 5.8 ;
DESIGN tiny ;
UNITS DISTANCE MICRONS 1000 ;
DIEAREA ( 0 0 ) ( 2000 2000 ) ;
NETS 1 ;
- n1 + ROUTED metal1 ( 0 1000 ) ( 2000 1000 ) ;
END NETS
END DESIGN
"""


def layout_config(work: Path, def_text: str = TINY_DEF, lef_text: str = TINY_LEF,
                  origin: tuple[float, float] = (0.6, 0.6), **simulate) -> dict:
    """CONFIG with a layout phantom of the given DEF/LEF text (written into ``work``)."""
    (work / "tiny.def").write_text(def_text)
    (work / "tiny.lef").write_text(lef_text)
    return {**CONFIG, "simulate": {**CONFIG["simulate"], "phantom": "layout",
                                   "layout_def": "tiny.def", "layout_lef": "tiny.lef",
                                   "voxel_size_m": 5.44e-8, "crop_origin_um": list(origin),
                                   "supersample": 1, **simulate}}


def test_tiny_layout_simulates(tmp_path):
    """The valid case the layout cases below differ from in one way each."""
    assert adept_in(tmp_path, "simulate", config=layout_config(tmp_path)) == 0
    with h5py.File(tmp_path / "ds" / "ground_truth.h5", "r") as f:
        assert f["occupancy"][()].any()


LAYOUT_CASES = {
    "malformed DEF": ({"def_text": TINY_DEF.replace("( 2000 2000 )", "( 2000 abc )")},
                      ["tiny.def:4:", "expected a coordinate"]),
    "malformed LEF": ({"lef_text": TINY_LEF.replace("HEIGHT 0.37", "HEIGHT high")},
                      ["tiny.lef:10:"]),
    "LEF without heights": ({"lef_text": TINY_LEF.replace("  HEIGHT 0.37 ;\n", "")},
                            ["tiny.lef", "metal1", "HEIGHT"]),
    "empty DEF": ({"def_text": ""}, ["tiny.def", "no routed metal"]),
    "crop outside the die": ({"origin": (50.0, 50.0)},
                             ["simulate.crop_origin_um", "outside the die", "tiny.def"]),
    "crop without metal": ({"origin": (0.0, 0.0)},
                           ["simulate.crop_origin_um", "holds no metal", "tiny.def"]),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_bad_layout_is_refused_before_any_output(tmp_path, capsys, case):
    changes, needles = LAYOUT_CASES[case]
    code = adept_in(tmp_path, "simulate", config=layout_config(tmp_path, **changes))
    assert_one_error_line(capsys, code, *needles)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- simulate


class _Interrupt(Exception):
    """Stands for a SIGINT/SIGKILL in the middle of the scans."""


def test_interrupted_simulation_is_not_a_dataset(simulated, work, capsys, monkeypatch):
    from hpc_adept.config import load_config
    from hpc_adept.parallel.context import SERIAL
    from hpc_adept.stages import simulate

    assert not (simulated / "ds" / INCOMPLETE_MARKER).exists()  # a finished run's dataset
    written = []

    def write_one_then_stop(path, scan):
        if written:
            raise _Interrupt
        written.append(path)
        real_write_cxi(path, scan)

    real_write_cxi = simulate.write_cxi
    monkeypatch.setattr(simulate, "write_cxi", write_one_then_stop)
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cfg = load_config(str(work / "c.yaml"), [f"data.path={work / 'ds'}"])
    with pytest.raises(_Interrupt):  # over the complete dataset of the fixture
        simulate.run_simulate(cfg, SERIAL, simulate.plan_simulate(cfg), None)
    monkeypatch.undo()
    code = adept_in(work, "ptycho")
    assert_one_error_line(capsys, code, "incomplete dataset", "run adept simulate again")
    assert not (work / "run").exists()
    assert adept_in(work, "simulate") == 0  # a rerun completes it
    assert not (work / "ds" / INCOMPLETE_MARKER).exists()


SIMULATE_TOO_BIG = {
    "volume": {"volume_shape": [512, 1024, 1024]},
    "probe diameter": {"probe_diameter_px": 0.001},
    "overlap": {"overlap": 0.99999},
    # isolated: an extended sample's slab, widened for that reach, would be the largest part
    "jitter": {"position_jitter_px": 1e6, "sample": "isolated"},
}


@pytest.mark.parametrize("case", list(SIMULATE_TOO_BIG))
def test_simulation_beyond_memory_is_refused(tmp_path, capsys, case, two_gib):
    config = {**CONFIG, "simulate": {**CONFIG["simulate"], **SIMULATE_TOO_BIG[case]}}
    code = adept_in(tmp_path, "simulate", config=config)
    key = next(iter(SIMULATE_TOO_BIG[case]))
    assert_one_error_line(capsys, code, "simulate: needs about", "GiB", key)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "run").exists()


def test_runtime_memory_guard_false_skips_the_simulation_estimate(tmp_path, two_gib):
    from hpc_adept.config import load_config
    from hpc_adept.errors import ConfigError
    from hpc_adept.parallel.context import SERIAL
    from hpc_adept.stages.simulate import plan_simulate

    config = {**CONFIG, "simulate": {**CONFIG["simulate"], **SIMULATE_TOO_BIG["volume"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(str(tmp_path / "c.yaml"), [f"data.path={tmp_path / 'ds'}"])
    with pytest.raises(ConfigError, match="runtime.memory_guard: false skips this check"):
        plan_simulate(cfg).validate(SERIAL, None)
    cfg = load_config(str(tmp_path / "c.yaml"),
                      [f"data.path={tmp_path / 'ds'}", "runtime.memory_guard=false"])
    plan_simulate(cfg).validate(SERIAL, None)  # no estimate, no error


def test_layout_supersampling_beyond_memory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("hpc_adept.backend.available_memory_bytes",
                        lambda device, local_size: (2**30, "the test's budget"))
    code = adept_in(tmp_path, "simulate", config=layout_config(tmp_path, supersample=64))
    assert_one_error_line(capsys, code, "simulate: needs about", "simulate.supersample")
    assert not (tmp_path / "ds").exists()
    capsys.readouterr()
    assert adept_in(tmp_path, "simulate", config=layout_config(tmp_path)) == 0  # fits


def test_fbp_beyond_memory_is_refused(simulated, tmp_path, capsys, two_gib):
    (tmp_path / "run").mkdir()
    shutil.copy(simulated / "run" / "projections.h5", tmp_path / "run")
    config = {**CONFIG, "recon": {"methods": ["fbp"], "volume_shape": [512, 1024, 1024]}}
    code = adept_in(tmp_path, "recon", config=config)
    assert_one_error_line(capsys, code, "fbp: needs about", "GiB", "projections.h5")
    assert not (tmp_path / "run" / "volume_fbp.h5").exists()
