"""``adept run`` on data sets in other programs' layouts (issue 19): the same volume.

One tiny simulated data set is written in our CXI layout, in fold_slice's prepared layout
and in ptychodus's layout (the writers of tests/test_formats.py, which cite those
programs' lines), and its phase projections as a TIFF stack with an angle file. ``adept
run`` (ptycho -> align -> recon FBP) on each must give the volume of our own layout.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from hpc_adept.io import read_cxi, read_projections, read_volume
from hpc_adept.io.cxi import PLANCK_TIMES_C_JM

from .conftest import adept
from .test_formats import write_ptychodus_product

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 24, 24], "n_angles": 6,
                 "frame_size": 32, "seed": 6, "write_projections": False},
    # mean_pattern: the foreign layouts keep no probe, so every run starts from the same one
    "ptycho": {"iterations": 4, "initial_probe": "mean_pattern"},
    "align": {"crop_shape": [24, 24], "max_iterations": 2, "binning": [2, 1]},
    "recon": {"methods": ["fbp"], "volume_shape": [16, 24, 24]},
    "runtime": {"device": "cpu"},
}
LAMINO = 61.0  # simulate.tilt_deg's default


def _run(work, run_dir: str, *settings: str, n_ranks: int = 1) -> np.ndarray:
    result = adept("run", "-c", "c.yaml", "--set", f"output.dir={run_dir}", *settings,
                   cwd=work, n_ranks=n_ranks)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_volume(work / run_dir / "volume_fbp.h5")[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The simulated data set and the volume ``adept run`` makes of our CXI layout."""
    work = tmp_path_factory.mktemp("realdata")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    reference = _run(work, "ours")
    return work, reference


def _scans(work):
    return [read_cxi(p) for p in sorted((work / "dataset").glob("scan_*.cxi"))]


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def write_foldslice_scan(folder, scan) -> None:
    """fold_slice prepared data of ``scan`` (the layout of tests/test_formats.py's
    ``write_foldslice``, with this scan's wavelength and object pixel)."""
    folder.mkdir(parents=True)
    with h5py.File(folder / "data_roi0_Ndp32_dp.hdf5", "w") as f:
        f.create_dataset("dp", data=scan.counts, compression="gzip", compression_opts=4)
    with h5py.File(folder / "data_roi0_Ndp32_para.hdf5", "w") as f:
        f["ppX"] = scan.positions_m[:, 0]
        f["ppY"] = scan.positions_m[:, 1]
        f["lambda"] = PLANCK_TIMES_C_JM / scan.energy_j
        f["dx"] = scan.object_pixel_size_m[1]
        f["angle"] = scan.rotation_angle_deg - 90.0  # PtychoShelves' angle = ours - 90


def write_ptychodus_scan(folder, index: int, scan) -> None:
    """ptychodus 1.7.0 ``/dp`` diffraction file and product file (the layout of
    tests/test_formats.py's ``write_ptychodus``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"s{index:02d}_diffraction.h5", "w") as f:
        f.create_dataset("/dp", data=scan.counts, compression="lzf")
    write_ptychodus_product(folder / f"s{index:02d}_product.h5", scan, f"s{index}",
                            np.arange(scan.n_positions))


def _foldslice(work) -> list[str]:
    """The data set in fold_slice's layout (once) and the settings that read it."""
    scans = _scans(work)
    if not (work / "foldslice").exists():
        for i, scan in enumerate(scans):
            write_foldslice_scan(work / "foldslice" / f"S{i:05d}", scan)
    return ["data.path=foldslice", f"data.laminography_angle_deg={LAMINO}",
            f"data.detector_pixel_m={scans[0].x_pixel_size_m!r}"]


def test_foldslice_prepared_data_gives_our_volume(work):
    work, reference = work
    volume = _run(work, "run_foldslice", *_foldslice(work))
    assert _pcc(volume, reference) > 0.99


@pytest.mark.mpi
def test_foldslice_prepared_data_on_two_ranks(work):
    """Each rank reads its scans' frames from the fold_slice files itself."""
    work, reference = work
    volume = _run(work, "run_foldslice_2", *_foldslice(work), n_ranks=2)
    assert _pcc(volume, reference) > 0.99


def test_ptychodus_files_give_our_volume(work):
    work, reference = work
    scans = _scans(work)
    for i, scan in enumerate(scans):
        write_ptychodus_scan(work / "ptychodus", i, scan)
    volume = _run(work, "run_ptychodus", "data.path=ptychodus",
                  "data.format=ptychodus-diffraction",
                  f"data.laminography_angle_deg={LAMINO}",
                  f"data.detector_pixel_m={scans[0].x_pixel_size_m!r}")
    assert _pcc(volume, reference) > 0.99


def test_tiff_stack_of_projections_gives_our_volume(work):
    """Projections made elsewhere (here: our own run's) as a TIFF stack with an angle file:
    ``adept run`` imports them (no LSQ-ML), aligns and reconstructs."""
    import tifffile

    work, reference = work
    ps = read_projections(work / "ours" / "projections.h5")
    order = np.arange(ps.n_angles)[::-1]  # the stack in another order than by angle
    tifffile.imwrite(work / "stack.tif", ps.projections[order], photometric="minisblack")
    (work / "angles.txt").write_text("".join(f"{float(a)!r}\n" for a in ps.angles_deg[order]))
    settings = ["data.path=stack.tif", "data.format=tiff-stack", "data.angles_path=angles.txt",
                f"data.pixel_size_m={float(ps.pixel_size_m)!r}",
                f"data.laminography_angle_deg={float(ps.tilt_deg)!r}"]
    volume = _run(work, "run_tiff", *settings)
    imported = read_projections(work / "run_tiff" / "projections.h5")
    np.testing.assert_array_equal(imported.projections, ps.projections)
    # nothing says what the offsets and ramps of projections made elsewhere refer to
    assert imported.extra["phase_offset_arbitrary"].tolist() == [1.0] * ps.n_angles
    assert _pcc(volume, reference) > 0.99
    assert not (work / "run_tiff" / "ptycho").exists()  # no LSQ-ML ran
    # a second run finds the import up to date; a changed angle file redoes it
    result = adept("run", "-c", "c.yaml", "--set", "output.dir=run_tiff", *settings, cwd=work)
    assert result.returncode == 0 and "run: ptycho skipped" in result.stderr, result.stderr
    (work / "angles.txt").write_text("".join(f"{float(a) + 1.0!r}\n"
                                             for a in ps.angles_deg[order]))
    result = adept("run", "-c", "c.yaml", "--set", "output.dir=run_tiff", *settings, cwd=work)
    assert result.returncode == 0 and "run: ptycho (inputs changed)" in result.stderr
    moved = read_projections(work / "run_tiff" / "projections.h5").angles_deg
    np.testing.assert_allclose(moved, ps.angles_deg + 1.0)


@pytest.mark.parametrize(("settings", "needle"), [
    (["data.path=foldslice_bad"], "set data.detector_pixel_m or data.distance_m"),
    (["data.path=foldslice_bad", "data.detector_pixel_m=75e-6"],
     "data.laminography_angle_deg"),
    (["data.path=foldslice_bad", f"data.laminography_angle_deg={LAMINO}",
      "data.distance_m=1.0", "data.detector_pixel_m=1e-6"], "disagrees with the object pixel"),
    (["data.path=stack_bad.tif"], "data.laminography_angle_deg is not set"),
    (["data.energy_ev=6200"], "data.energy_ev: our CXI files record it"),
    (["data.path=stack_bad.tif", f"data.laminography_angle_deg={LAMINO}"],
     "a TIFF stack needs data.angles_path and data.pixel_size_m"),
])
def test_bad_foreign_input_is_one_line_and_nothing_written(work, settings, needle):
    import tifffile

    work, _ = work
    if not (work / "foldslice_bad").exists():
        write_foldslice_scan(work / "foldslice_bad" / "S00000", _scans(work)[0])
        tifffile.imwrite(work / "stack_bad.tif", np.zeros((2, 8, 8), np.float32))
    result = adept("run", "-c", "c.yaml", "--set", "output.dir=run_bad", *settings, cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (work / "run_bad" / "projections.h5").exists()
    assert not (work / "run_bad" / "ptycho").exists()


def test_a_changed_positions_file_redoes_its_scan(work):
    """fold_slice keeps the positions beside the frames (``_para.hdf5``): changing them
    redoes that scan; an unchanged data set reuses every finished scan."""
    work, _ = work
    settings = _foldslice(work)
    args = ("ptycho", "-c", "c.yaml", "--set", "output.dir=run_rerun", *settings)
    assert adept(*args, cwd=work).returncode == 0
    result = adept(*args, cwd=work)
    assert result.returncode == 0 and "reused 6 finished scan(s)" in result.stderr, \
        result.stderr[-2000:]
    para = next((work / "foldslice").glob("S00003/*_para.hdf5"))
    with h5py.File(para, "a") as f:
        f["ppX"][0] += 1e-9
    result = adept(*args, cwd=work)
    assert result.returncode == 0 and "reused 5 finished scan(s)" in result.stderr, \
        result.stderr[-2000:]
