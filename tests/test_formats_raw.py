"""Raw beamline layouts read as a whole (issue 19): a cSAXS / LamNI tomography folder.

The fixtures write the beamline's files with h5py and plain text following the programs
that read them, line by line (cited beside each writer): fold_slice (yijiang1/fold_slice),
ptychodus 1.7.0 (AdvancedPhotonSource/ptychodus) and ptypy (ptycho/ptypy).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_adept.errors import DataError
from hpc_adept.io.cxi import Scan
from hpc_adept.io.formats import detect_format, inspect, read_scans
from hpc_adept.io.formats.lamni import read_angle_table, read_lamni_positions

from .conftest import adept
from .test_formats import (
    DISTANCE_M,
    ENERGY_EV,
    FRAME,
    LAMINO,
    PIXEL_M,
    _object_pixel,
    _one_line,
    _scan,
)
from .test_real_data import work  # noqa: F401 (the module's simulated data set and volume)

ORCHESTRA = ("DataPoint TotalPoints Target_x Average_x_st_fzp Stdev_x_st_fzp Target_y "
             "Average_y_st_fzp Stdev_y_st_fzp Average_cap1 Stdev_cap1 Average_cap2 "
             "Stdev_cap2 Average_cap3 Stdev_cap3 Average_cap4 Stdev_cap4 Average_cap5 "
             "Stdev_cap5")
CENTRE_RC = (19, 27)  # the beam centre of a 16 x 16 frame's detector (_detector)


def write_positions(path: Path, scan: Scan, scan_no: int, angle: float,
                    header: str = ORCHESTRA) -> None:
    """``specES1/scan_positions/scan_%05d.dat`` as its readers expect it.

    - title line ``Scan 00123, lsamrot_encoder 12.3``: fold_slice
      ``+beamline/read_position_file.m`` (``textscan(f,'%s %d, %s %f',1)``), ptychodus's
      test of ``plugins/aps31id_lamni/position_file.py``;
    - column names on line 2 (ptypy ``cSAXS.py`` ``get_positions``: ``if k == 1: keys =
      line.split()``; ptychodus ``column_header_row = next(csv_iterator)``);
    - rows from line 3 (``np.loadtxt(path, skiprows=2)``), micrometres, the negated
      position (ptychodus: ``-LengthUnit.MICROMETER.to_meters(float(row[x_column]))``;
      fold_slice ``orchestra.m`` ``positions_real = [Average_y_st_fzp*1e-6
      Average_x_st_fzp*1e-6]``, negated in ``ptycho_adjust_positions.m``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    names = header.split()
    n = scan.n_positions
    rows = []
    for i, (x, y, _) in enumerate(scan.positions_m):
        values = dict.fromkeys(names, 0.0)
        values.update({"DataPoint": i, "TotalPoints": n, "Target_x": round(-x * 1e6, 3),
                       "Target_y": round(-y * 1e6, 3), "Average_x_st_fzp": -x * 1e6,
                       "Average_y_st_fzp": -y * 1e6, "Average_x": -x * 1e6,
                       "Average_y": -y * 1e6})
        rows.append(" ".join(f"{values[k]:.9g}" for k in names))
    path.write_text(f"Scan {scan_no:05d}, lsamrot_encoder {angle:.4f}\n{header}\n"
                    + "\n".join(rows) + "\n")


def _detector(frame: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A small stand-in for the Eiger 1.5M's 1030 x 1614 frame, and its beam centre."""
    return (frame + 24, frame + 34), (frame // 2 + 11, frame // 2 + 19)


def _detector_frames(scan: Scan) -> tuple[np.ndarray, tuple[int, int]]:
    """``scan``'s counts with their DC at the beam centre of a :func:`_detector` frame
    (uint32; one pixel at the dtype's maximum: a gap), and the centre (row, col)."""
    n, frame, _ = scan.counts.shape
    shape, centre = _detector(frame)
    frames = np.zeros((n, *shape), np.uint32)
    r0, c0 = centre[0] - frame // 2, centre[1] - frame // 2
    frames[:, r0:r0 + frame, c0:c0 + frame] = np.rint(scan.counts).astype(np.uint32)
    frames[:, 0, 0] = np.iinfo(np.uint32).max
    return frames, centre


def write_eiger(path: Path, scan: Scan, layout: str = "legacy") -> None:
    """A raw Eiger file of ``scan``'s counts placed with their DC at the beam centre of a
    larger frame (uint32; one pixel at the dtype's maximum: a gap).

    - ``legacy``: ptychodus 1.7.0 ``plugins/aps31id_lamni/diffraction_file.py``
      ``_read_legacy``: ``/entry/data/eiger_4`` with attributes ``Center_x_pixel``,
      ``Center_y_pixel``, ``Detector_distance_m``, ``Photon_energy_kev``, ``Pixel_size``;
    - ``csaxs``: fold_slice ``+detector/+eiger1p5M/eiger1p5M.m`` (``H5Location``
      ``/entry/instrument/eiger_4/data``) with ptychodus ``sls_csaxs_diffraction_file.py``
      lines 37-40 (``monochromator/distance`` mm, sign ignored: ``abs``;
      ``eiger_4/x_pixel_size`` um; ``monochromator/energy`` keV); no beam centre.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frames, centre = _detector_frames(scan)
    shape = frames.shape[1:]
    pixel = scan.x_pixel_size_m
    with h5py.File(path, "w") as f:
        if layout == "legacy":
            ds = f.create_dataset("/entry/data/eiger_4", data=frames, chunks=(1, *shape))
            ds.attrs.update({"Center_x_pixel": centre[1], "Center_y_pixel": centre[0],
                             "Detector_distance_m": scan.distance_m,
                             "Photon_energy_kev": scan.energy_ev / 1e3, "Pixel_size": pixel})
        else:
            f.create_dataset("/entry/instrument/eiger_4/data", data=frames)
            f["/entry/instrument/monochromator/distance"] = -scan.distance_m * 1e3
            f["/entry/instrument/monochromator/energy"] = scan.energy_ev / 1e3
            f["/entry/instrument/eiger_4/x_pixel_size"] = pixel * 1e6
            f["/entry/instrument/eiger_4/y_pixel_size"] = pixel * 1e6


def write_tomo_folder(root: Path, scans: dict[int, Scan], site: str = "psi",
                      layout: str = "legacy", extra_rows: str = "") -> Path:
    """A LamNI tomography as the beamline leaves it (see :mod:`.lamni_tomo`'s citations).

    - PSI: ``ROOT/specES1/dat-files/tomography_scannumbers.txt`` and
      ``ROOT/specES1/scan_positions/scan_%05d.dat`` (fold_slice
      ``tomo/tests/test_tomo_real_data.m`` lines 52-53); APS 31-ID-E: the same without
      ``specES1/`` (ptychodus ``plugins/workflow.py`` lines 104-107);
    - frames ``ROOT/eiger_4/S%05d-%05d/S%05d/run_%05d_000000000000.h5`` (fold_slice
      ``+utils/compile_x12sa_dirname.m``, ``+eiger1p5M/eiger1p5M.m`` ``basepath_dir``,
      ``+eiger1p5M/convert2hdf5.m`` ``dir([load_dir, '/run_*.h5'])``);
    - table rows ``scan_no golden_angle encoder_angle measurement_id subtomo_no
      detector_position label`` (ptychodus ``_scan_table.py``), the encoder angle in the
      PtychoShelves convention (ours - 90, :mod:`hpc_adept.io.formats.geometry`).
    """
    spec = root / "specES1" if site == "psi" else root
    rows = []
    for k, (number, scan) in enumerate(sorted(scans.items())):
        angle = scan.rotation_angle_deg - 90.0
        low = number // 1000 * 1000
        folder = root / "eiger_4" / f"S{low:05d}-{low + 999:05d}" / f"S{number:05d}"
        if layout == "dectris":  # the detector's own master + data files (SIMPLON API)
            write_dectris_master(folder, f"S{number:05d}", scan)
        else:
            write_eiger(folder / f"run_{number:05d}_000000000000.h5", scan, layout)
        write_positions(spec / "scan_positions" / f"scan_{number:05d}.dat", scan, number,
                        angle)
        rows.append(f"{number} {k * 17.5:.4f} {angle:.6f} {k} 1 0 lamni_ic")
    table = spec / "dat-files" / "tomography_scannumbers.txt"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(rows) + "\n" + extra_rows)
    return table


def _tomo_scans() -> dict[int, Scan]:
    return {number: _scan(angle, seed=i) for i, (number, angle) in
            enumerate(((998, 40.0), (999, -20.0), (1000, 100.0), (1001, 10.0)))}


@pytest.mark.parametrize("site", ["psi", "aps"])
def test_lamni_tomography_folder_reads_every_scan_with_its_angle(tmp_path, site):
    scans = _tomo_scans()
    table = write_tomo_folder(tmp_path, scans, site)
    # scan 999 measured again: the last row wins (load_angles.m: unique(scans, 'last'))
    rows = table.read_text().replace(" -110.000000 ", " -111.000000 ")
    table.write_text(rows + "999 1.0 -110.000000 1 1 0 lamni_ic\n")
    assert detect_format(tmp_path) == "lamni-tomo"
    read = read_scans(tmp_path, roi_px=FRAME, laminography_angle_deg=LAMINO)
    assert [s.rotation_angle_deg for s in read] == pytest.approx([-20.0, 10.0, 40.0, 100.0])
    by_angle = {round(s.rotation_angle_deg): s for s in scans.values()}
    for got in read:
        want = by_angle[round(got.rotation_angle_deg)]
        np.testing.assert_array_equal(got.counts, want.counts)
        np.testing.assert_allclose(got.positions_m, want.positions_m, atol=1e-14)
        assert got.energy_j == pytest.approx(want.energy_j, rel=1e-9)
        assert got.distance_m == pytest.approx(DISTANCE_M)
        assert got.x_pixel_size_m == pytest.approx(PIXEL_M)
        assert got.laminography_angle_deg == pytest.approx(LAMINO)
        assert got.mask is not None and not got.mask.any()  # the gap lies outside the crop
    assert read_angle_table(table)[999].golden_angle_deg == 1.0
    text = inspect(tmp_path, roi_px=FRAME)
    assert "format: lamni-tomo" in text and "scans: 4" in text
    assert "scan numbers: 998..1001 (4 of the table's 4)" in text
    assert "rotation angles: -20..100 deg" in text
    assert "not in the files (supply them): laminography_angle_deg" in text


def test_lamni_tomography_folder_of_dectris_master_files(tmp_path):
    """Scan folders holding the detector's own ``*_master.h5`` + ``*_data_%06d.h5``: each
    master's frames come from the data files it links (header units checked)."""
    scans = _tomo_scans()
    write_tomo_folder(tmp_path, scans, layout="dectris")
    assert detect_format(tmp_path) == "lamni-tomo"
    read = read_scans(tmp_path, roi_px=FRAME, laminography_angle_deg=LAMINO)
    assert [Path(s.path).name for s in read] == [
        "S00999_master.h5", "S01001_master.h5", "S00998_master.h5", "S01000_master.h5"]
    by_angle = {round(s.rotation_angle_deg): s for s in scans.values()}
    for got in read:
        want = by_angle[round(got.rotation_angle_deg)]
        np.testing.assert_array_equal(got.counts, want.counts)
        assert got.distance_m == pytest.approx(DISTANCE_M)
        assert got.x_pixel_size_m == pytest.approx(PIXEL_M)
        assert got.energy_j == pytest.approx(want.energy_j, rel=1e-9)
    # the first data file missing: one error naming the scan
    (tmp_path / "eiger_4" / "S00000-00999" / "S00999" / "S00999_data_000001.h5").unlink()
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, roi_px=FRAME, laminography_angle_deg=LAMINO)
    assert "S00999" in _one_line(exc)


def test_lamni_tomography_subsets_and_the_csaxs_layout(tmp_path):
    scans = _tomo_scans()
    write_tomo_folder(tmp_path, scans, layout="csaxs",
                      extra_rows="1002 70.0 70.000000 4 1 0 lamni_ic\n")  # not yet on disk
    common = {"roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "beam_center_rc": CENTRE_RC, "load_counts": False}
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, **common)
    assert "S01002" in _one_line(exc) and "data.scan_range" in str(exc.value)
    some = read_scans(tmp_path, scan_range=(999, 1001), **common)
    assert [Path(s.path).name for s in some] == [
        "run_00999_000000000000.h5", "run_01001_000000000000.h5",
        "run_01000_000000000000.h5"]  # ordered by angle: -20, 10, 100
    every_other = read_scans(tmp_path, scan_range=(998, 1001), scan_step=2, **common)
    assert sorted(Path(s.path).name[4:9] for s in every_other) == ["00998", "01000"]
    one = read_scans(tmp_path, scan_range=(998, 1001), member=some[1].path,
                     **{**common, "load_counts": True})
    assert len(one) == 1 and one[0].rotation_angle_deg == pytest.approx(10.0)
    np.testing.assert_array_equal(one[0].counts, scans[1001].counts)
    assert one[0].distance_m == pytest.approx(DISTANCE_M)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, scan_range=(2000, 3000), **common)
    assert "no scan" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, scan_range=(998, 1001), rotation_angles_deg=[0, 1, 2, 3],
                   **common)
    assert "angle table" in _one_line(exc)


def test_position_files_in_every_layout_their_readers_accept(tmp_path):
    """Orchestra, fold_slice's named columns and the outdated ``Average_x``/``Average_y``
    give the same positions; a header naming neither is one error line."""
    scan = _scan(0.0)
    want = scan.positions_m
    for name, header in (("orchestra", ORCHESTRA),
                         ("named", "Target_x Target_y Average_y_st_fzp Average_x_st_fzp"),
                         ("outdated", "Average_x Average_y Stdev_x Stdev_y")):
        path = tmp_path / f"{name}.dat"
        write_positions(path, scan, 5, 0.0, header)
        indexes, positions = read_lamni_positions(path)
        assert indexes.tolist() == list(range(scan.n_positions))
        np.testing.assert_allclose(positions, want, atol=1e-14)
    bad = tmp_path / "bad.dat"
    write_positions(bad, scan, 5, 0.0, "Target_x Target_y")
    with pytest.raises(DataError) as exc:
        read_lamni_positions(bad)
    assert "Average_x_st_fzp" in _one_line(exc)
    text = (tmp_path / "named.dat").read_text().splitlines()
    (tmp_path / "short.dat").write_text("\n".join(text[:3] + ["1 2 3"]) + "\n")
    with pytest.raises(DataError) as exc:
        read_lamni_positions(tmp_path / "short.dat")
    assert "line 4: 3 columns, expected 4" in _one_line(exc)
    (tmp_path / "um.dat").write_text("\n".join(text[:2] + ["0 0 1e5 1e5"]) + "\n")
    with pytest.raises(DataError) as exc:  # metres stored where micrometres belong
        read_lamni_positions(tmp_path / "um.dat")
    assert "too large" in _one_line(exc)


def test_softgluezynq_raw_rows_of_one_frame_are_averaged(tmp_path):
    """softGlueZynq's raw layout samples each frame several times: ptychodus
    ``plugins/aps31id_lamni/position_file.py`` (module docstring: "several oversampled rows
    share one value" of ``Detector_Count``, 1-based; ``_SOFT_GLUE_ZYNQ_RAW`` header
    ``DataPoint x_st_fzp y_st_fzp ckUser_Clk_Count Detector_Count``) averages the rows of one
    index into one position (``api/reconstructor.py`` ``prepare_reconstruct_input``): one
    position per frame, not one frame repeated per row."""
    scan = _scan(0.0)
    rows = []
    for i, (x, y, _) in enumerate(scan.positions_m):
        for k, wobble in enumerate((-0.002, 0.0, 0.002)):  # three samples around the point
            rows.append(f"{3 * i + k} {-x * 1e6 + wobble:.9f} {-y * 1e6 - wobble:.9f} "
                        f"{1000 * (3 * i + k)} {i + 1}")
    path = tmp_path / "scan_00005.dat"
    path.write_text("Scan 00005, lsamrot_encoder 0.0000\r\nDataPoint x_st_fzp y_st_fzp "
                    "ckUser_Clk_Count Detector_Count\r\n" + "\r\n".join(rows) + "\r\n\r\n")
    indexes, positions = read_lamni_positions(path)
    assert indexes.tolist() == list(range(scan.n_positions))
    np.testing.assert_allclose(positions, scan.positions_m, atol=1e-14)


def test_area_detector_metadata_units_as_ptychodus_names_them(tmp_path):
    """``/entry/metadata_units/*_EGU``: ptychodus 1.7.0 ``plugins/aps31id_lamni/
    diffraction_file.py`` (``_LEN_TO_M``, ``_E_TO_EV``, ``_read_egu``: stripped, lower case)
    knows cm, millimeter, microns, ... ; a unit name it does not know is one error line, not
    a silent default (mm / um / keV) that would be off by a power of ten."""
    from .test_formats import write_lamni

    scan = _scan(70.0)
    eiger, positions, _ = write_lamni(tmp_path, scan, "area-detector")
    with h5py.File(eiger, "a") as f:
        f["/entry/instrument/detector/detector_distance"][...] = [DISTANCE_M * 1e2]
        f["/entry/metadata_units/Distance_EGU"] = "cm"
        f["/entry/metadata_units/PixelSize_EGU"] = np.array([b"Microns "])
        f["/entry/metadata_units/MonoEnergy_EGU"] = "keV"
    read = read_scans(eiger, positions_path=positions, roi_px=FRAME,
                      laminography_angle_deg=LAMINO, rotation_angle_deg=0.0)[0]
    assert read.distance_m == pytest.approx(DISTANCE_M)
    assert read.x_pixel_size_m == pytest.approx(PIXEL_M)
    with h5py.File(eiger, "a") as f:
        del f["/entry/metadata_units/MonoEnergy_EGU"]
        f["/entry/metadata_units/MonoEnergy_EGU"] = "kV"
    with pytest.raises(DataError) as exc:
        read_scans(eiger, positions_path=positions, roi_px=FRAME,
                   laminography_angle_deg=LAMINO, rotation_angle_deg=0.0)
    assert "MonoEnergy_EGU" in _one_line(exc) and "unknown unit 'kv'" in _one_line(exc)


def test_angle_table_of_six_columns_and_bad_rows(tmp_path):
    """fold_slice's older table has six columns (``read_omny_angles.m`` ``case {3,6}``:
    scan, target, readout, subtomo, detpos, name)."""
    old = tmp_path / "old.txt"
    old.write_text("12 0.0 0.52 1 0 chip\n13 10.0 10.48 1 0 chip\n")
    table = read_angle_table(old)
    assert table[13].encoder_angle_deg == 10.48 and table[13].subtomo_no == 1
    for bad in ("12 0.0 x 1 1 0 chip\n", "12 0.0 1.0 1\n", "12 0.0 nan 1 1 0 chip\n"):
        old.write_text(bad)
        with pytest.raises(DataError) as exc:
            read_angle_table(old)
        assert "line 1" in _one_line(exc)
    # a tomography being measured: the last line, still without its newline, is being
    # written and is skipped; complete, it is read; a bad line before it stays an error
    rows = "12 0.0 0.52 0 1 0 chip\n13 10.0 10.48 0 1 0 chip\n"
    old.write_text(rows + "14 20.0 19")
    assert sorted(read_angle_table(old)) == [12, 13]
    old.write_text(rows + "14 20.0 19.5 0 1 0 chip")
    assert sorted(read_angle_table(old)) == [12, 13, 14]
    old.write_text("12 0.0 0.5\n" + rows + "14 20.0 19")
    with pytest.raises(DataError) as exc:
        read_angle_table(old)
    assert "line 1" in _one_line(exc)


# --------------------------------------------------------------------------- adept run


def test_lamni_tomography_folder_gives_our_volume(work):  # noqa: F811 (the fixture)
    """``adept run`` (ptycho -> align -> recon FBP) on the beamline folder of the simulated
    data set: the volume of our own layout. ``data.scan_range`` leaves out a scan the
    table lists but the disk does not hold yet (a tomography still being measured)."""
    from .test_real_data import LAMINO as RUN_LAMINO
    from .test_real_data import _pcc, _run, _scans

    work, reference = work
    scans = _scans(work)
    numbers = {997 + i: scan for i, scan in enumerate(scans)}  # across S00000-00999 / S01000-
    write_tomo_folder(work / "lamni", numbers, extra_rows="1100 5.0 5.0 9 1 0 lamni_ic\n")
    settings = ["data.path=lamni", f"data.laminography_angle_deg={RUN_LAMINO}",
                f"data.roi_px={scans[0].frame_shape[0]}"]
    volume = _run(work, "run_lamni", *settings, f"data.scan_range=[997, {996 + len(scans)}]")
    assert _pcc(volume, reference) > 0.99
    result = adept("run", "-c", "c.yaml", "--set", "output.dir=run_lamni_bad", *settings,
                   cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "S01100" in lines[0] and "data.scan_range" in lines[0], lines
    assert not (work / "run_lamni_bad" / "projections.h5").exists()
    assert not (work / "run_lamni_bad" / "ptycho").exists()


# --------------------------------------------------------------------------- PtychoShelves


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) 0-based of the runs of True (prep_h5data.m lines 100-126: begins where
    ``diff(any(fmask)) == 1``, ends where it is -1, plus the edges)."""
    edges = np.diff(np.concatenate([[0], valid.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def write_ptychoshelves_prepared(folder: Path, scan_no: int, scan: Scan,
                                 fmask: np.ndarray | None = None) -> Path:
    """``S%05d_data_%03dx%03d.h5`` as fold_slice ``ptycho/+core/prep_h5data.m`` writes it.

    - ``prep_data_matlab.m`` (``+matlab_ps``) lines 206-216: ``max_sum`` per scan, ``max_power =
      max(max_sum) / prod(asize)``, ``renorm = sqrt(1/max_power)``, ``p.fmag =
      fftshift_2D(sqrt(data)) * renorm``, ``p.fmask = fftshift_2D(fmask)``;
    - ``ptycho_adjust_positions.m``: ``positions = -positions_real ./ dx_spec``, ``- min``
      (``positions_real`` is already negated by the position loader, so the window moves
      with (+y, +x)), then prep_h5data.m line 216: ``uint32(transpose(round(...)))``;
    - prep_h5data.m lines 97-139 (modules from ``any(fmask, 1)`` / ``any(fmask, 2)``),
      line 164 (bad pixels ``[y, x] - 1`` inside modules), lines 182-218 (groups,
      attributes, line 217 ``data = permute((fmag/renorm).^2, [2 1 3])``);
    - ``+io/+HDF/save2hdf5.m`` / ``write_dataset.m``: MATLAB ``[a, b, c]`` is stored with
      ``fliplr`` dims, so h5py reads ``[c, b, a]`` and the permuted frames as MATLAB's
      ``[row, col]``; a ``[2, K]`` matrix reads as ``[K, 2]``; root attributes
      ``filename``, ``creator``, ``file_time``; ``h5_struc.Attributes.format = 2``.
    """
    n, size, _ = scan.counts.shape
    dx = scan.object_pixel_size_m[1]
    valid = np.ones((size, size), bool) if fmask is None else fmask  # ours: DC at N // 2
    max_sum = float(scan.counts.sum(axis=(1, 2)).max())
    renorm = np.sqrt(1.0 / (max_sum / size ** 2))
    fmag = np.fft.fftshift(np.sqrt(scan.counts), axes=(1, 2)) * renorm
    stored_mask = np.fft.fftshift(valid)
    rc = np.stack([scan.positions_m[:, 1], scan.positions_m[:, 0]], 1) / dx
    positions = np.round(rc - rc.min(axis=0)).astype(np.uint32)
    rows, cols = _runs(stored_mask.any(axis=1)), _runs(stored_mask.any(axis=0))
    modules = np.array([[r1 - r0 + 1, c1 - c0 + 1, r0, c0]
                        for r0, r1 in rows for c0, c1 in cols], np.uint32)
    in_modules = np.zeros_like(valid)
    for nr, nc, r0, c0 in modules:
        in_modules[r0:r0 + nr, c0:c0 + nc] = True
    bad = np.argwhere(in_modules & ~stored_mask).astype(np.uint32)  # (row, col), 0-based
    path = folder / f"S{scan_no:05d}_data_{size:03d}x{size:03d}.h5"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update({"filename": str(path), "creator": "ptycho_recons",
                        "file_time": "03-Dec-2026 12:00:00", "format": 2})
        f["probes"] = np.array([[size, size]], np.uint64)
        f["objects"] = np.array([[size + 40, size + 40]], np.uint64)
        det = f.create_group("detector/n0")
        det.attrs.update({"rows": np.uint32(size), "columns": np.uint32(size)})
        if len(bad):
            det["bad_pixels"] = bad
        det["modules"] = modules
        meas = f.create_group("measurement")
        meas.attrs["max_power"] = 1.0 / renorm ** 2
        group = meas.create_group("n0")
        group.attrs.update({"detector": np.uint32(0), "probe": np.uint32(0),
                            "object": np.uint32(0), "max_sum": np.uint32(max_sum)})
        group["positions"] = positions
        group.create_dataset("data", data=((fmag / renorm) ** 2).astype(np.float32),
                             compression="gzip")
    return path


def test_ptychoshelves_prepared_round_trip(tmp_path):
    scan = _scan(30.0)
    valid = np.ones((FRAME, FRAME), bool)
    valid[3, :] = False  # a gap between modules (a row)
    valid[10, 12] = False  # a bad pixel
    path = write_ptychoshelves_prepared(tmp_path / "S00042", 42, scan, valid)
    assert detect_format(tmp_path) == "ptychoshelves-prepared"
    supplied = {"energy_ev": ENERGY_EV, "distance_m": DISTANCE_M, "detector_pixel_m": PIXEL_M,
                "laminography_angle_deg": LAMINO}
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, **supplied)
    assert "data.rotation_angles_deg" in _one_line(exc)
    read = read_scans(tmp_path, rotation_angles_deg=[30.0 - 90.0], **supplied)[0]
    np.testing.assert_allclose(read.counts, scan.counts, rtol=1e-6, atol=1e-6)
    dx = _object_pixel()
    middle = np.array([3.0 * dx, -2.0 * dx, 0.0])  # the middle of _scan's positions
    np.testing.assert_allclose(read.positions_m, scan.positions_m - middle, atol=1e-15)
    assert read.rotation_angle_deg == pytest.approx(30.0)
    np.testing.assert_array_equal(read.mask, ~valid)
    table = tmp_path / "tomography_scannumbers.txt"
    table.write_text("41 0.0 0.0 0 1 0 ic\n42 0.0 -55.5 1 1 0 ic\n")
    by_table = read_scans(path, angle_table_path=table, **supplied)[0]
    assert by_table.rotation_angle_deg == pytest.approx(34.5)
    text = inspect(tmp_path, angle_table_path=table)
    assert "format: ptychoshelves-prepared" in text and "frame shape: 16 x 16" in text
    assert "energy_ev" in text and "distance_m" in text


def test_ptychoshelves_prepared_empty_per_frame_bad_pixels(tmp_path):
    """Frames whose masks differ (prep_h5data.m ``~single_mask``) keep their bad pixels
    per measurement: ``bad_pixels{ii}`` concatenates each frame's ``[2, K]`` list (double)
    and is written even when no frame has any, a ``2 x 0`` matrix that ``write_dataset.m``
    stores with ``fliplr`` dims: h5py ``(0, 2)``. It marks nothing."""
    scan = _scan(30.0)
    path = write_ptychoshelves_prepared(tmp_path / "S00042", 42, scan)
    with h5py.File(path, "a") as f:
        f.create_dataset("measurement/n0/bad_pixels", shape=(0, 2), dtype=np.float64)
        f["measurement/n0/bad_pixels_index"] = np.zeros(scan.n_positions, np.uint64)
    read = read_scans(path, energy_ev=ENERGY_EV, distance_m=DISTANCE_M,
                      detector_pixel_m=PIXEL_M, laminography_angle_deg=LAMINO,
                      rotation_angles_deg=[0.0])[0]
    assert read.mask is None
    np.testing.assert_allclose(read.counts, scan.counts, rtol=1e-6, atol=1e-6)


def test_bad_ptychoshelves_prepared_files(tmp_path):
    scan = _scan(0.0)
    path = write_ptychoshelves_prepared(tmp_path, 7, scan)
    supplied = {"energy_ev": ENERGY_EV, "distance_m": DISTANCE_M, "detector_pixel_m": PIXEL_M,
                "laminography_angle_deg": LAMINO, "rotation_angle_deg": 0.0}
    with h5py.File(path, "a") as f:
        del f["measurement/n0/positions"]
        f["measurement/n0/positions"] = np.zeros((3, 2), np.uint32)
    with pytest.raises(DataError) as exc:
        read_scans(path, **supplied)
    assert "/measurement/n0/positions" in _one_line(exc)
    with h5py.File(path, "a") as f:
        del f["measurement/n0/positions"]
        f["measurement/n0/positions"] = np.zeros((scan.n_positions, 2), np.uint32)
        data = f["measurement/n0/data"][()]
        data[1, 2, 3] = np.nan
        del f["measurement/n0/data"]
        f["measurement/n0/data"] = data
    with pytest.raises(DataError) as exc:
        read_scans(path, **supplied)
    assert "/measurement/n0/data: contains NaN" in _one_line(exc)
    with h5py.File(path, "a") as f:
        del f["measurement/n0/data"]
        f["measurement/n0/data"] = np.ones((scan.n_positions, 16, 12), np.float32)
    with pytest.raises(DataError) as exc:
        read_scans(path, **supplied)
    assert "square" in _one_line(exc)
    with h5py.File(path, "a") as f:
        del f["measurement/n0/data"]
        f["measurement/n0/data"] = np.ones((scan.n_positions, 16, 16), np.float32)
    renamed = path.rename(path.with_name("S00007_data_032x032.h5"))
    with pytest.raises(DataError) as exc:
        read_scans(renamed, **supplied)
    assert "the name says 032x032" in _one_line(exc)
    # fold_slice names a binned file by the unbinned size (load_prepared_data.m): 16 x 16
    # frames of 2x2 physical pixels, so the object pixel halves against the unbinned read.
    binned = renamed.rename(renamed.with_name("S00007_data_032x032_b1.h5"))
    one = read_scans(binned, **supplied)[0]
    renamed = binned.rename(binned.with_name("S00007_data_016x016.h5"))
    plain = read_scans(renamed, **supplied)[0]
    np.testing.assert_allclose(one.positions_m, plain.positions_m / 2, atol=1e-15)
    with h5py.File(renamed, "a") as f:
        if "detector/n0/modules" in f:
            del f["detector/n0/modules"]
        f["detector/n0/modules"] = np.array([[16, 16, -2, 0]], np.int64)
    with pytest.raises(DataError) as exc:
        read_scans(renamed, **supplied)
    assert "lies outside the 16 x 16 frame" in _one_line(exc)
    with h5py.File(renamed, "a") as f:
        del f["detector"]
        del f["measurement/n0"]
    with pytest.raises(DataError) as exc:
        read_scans(renamed, **supplied)
    assert "n0" in _one_line(exc)


def test_ptychoshelves_prepared_files_give_our_volume(work):  # noqa: F811 (the fixture)
    """``adept run`` on PtychoShelves prepared files (one per scan, the rotation angles from
    a LamNI angle table by scan number) gives the volume of our own layout holding what the
    format keeps: positions rounded to whole pixels (``prep_h5data.m`` line 216), each
    scan's centred (the format keeps no absolute offset)."""
    from hpc_adept.io.cxi import write_cxi

    from .test_real_data import LAMINO as RUN_LAMINO
    from .test_real_data import _pcc, _run, _scans

    work, _ = work
    scans = _scans(work)
    rows = []
    for i, scan in enumerate(scans):
        write_ptychoshelves_prepared(work / "psi" / f"S{100 + i:05d}", 100 + i, scan)
        rows.append(f"{100 + i} 0.0 {scan.rotation_angle_deg - 90.0!r} {i} 1 0 ic\n")
        dx = scan.object_pixel_size_m[1]
        kept = np.round(scan.positions_m[:, :2] / dx - scan.positions_m[:, :2].min(0) / dx)
        kept = (kept - (kept.min(0) + kept.max(0)) / 2) * dx
        write_cxi(work / "psi_ours" / f"scan_{i:04d}.cxi", Scan(**{
            **scan.__dict__, "positions_m": np.column_stack([kept, np.zeros(len(kept))])}))
    (work / "psi_angles.txt").write_text("".join(rows))
    reference = _run(work, "run_psi_ours", "data.path=psi_ours")
    first = scans[0]
    volume = _run(work, "run_psi", "data.path=psi", "data.angle_table_path=psi_angles.txt",
                  f"data.laminography_angle_deg={RUN_LAMINO}",
                  f"data.energy_ev={first.energy_ev!r}", f"data.distance_m={first.distance_m!r}",
                  f"data.detector_pixel_m={first.x_pixel_size_m!r}")
    assert _pcc(volume, reference) > 0.99


# --------------------------------------------------------------------------- geometry pins


def _centroid(image: np.ndarray) -> np.ndarray:
    weights = np.clip(image, 0, None)
    rows, cols = np.indices(image.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def _tike_forward(volume: np.ndarray, theta: np.ndarray, tilt: float) -> np.ndarray:
    """tike's ``Lamino.fwd`` (``src/tike/operators/cupy/lamino.py``) as an exact Fourier
    sum: ``_make_grids`` (``u = arange(-n//2, n//2) / n``; ``ku`` along columns, ``kv``
    along rows; ``xi[:, 2] = ku cos + kv sin cos(tilt)``, ``xi[:, 1] = -ku sin + kv cos
    cos(tilt)``, ``xi[:, 0] = kv sin(tilt)``), ``eq2us`` (``checkerboard(fftn(
    checkerboard(f)))``: the forward transform of the volume centred at ``n / 2``, sampled
    at ``xi`` instead of interpolated by the USFFT), then ``checkerboard(ifft2(
    checkerboard(F)))``: the inverse 2-D transform centred at ``n / 2``. Returns the real
    part ``[n_theta, n, n]``."""
    n = volume.shape[0]
    k = np.arange(-n // 2, n // 2) / n
    ku = np.broadcast_to(k, (n, n)).ravel()
    kv = np.broadcast_to(k[:, None], (n, n)).ravel()
    voxels = np.argwhere(volume > 1e-9 * volume.max())
    weights = volume[tuple(voxels.T)]
    coords = voxels - n // 2  # (z, y, x) from the centre n / 2
    centred = np.exp(2j * np.pi * np.outer(np.arange(n) - n // 2, k))  # [r, k]
    images = []
    for t in theta:
        xi = np.stack([kv * np.sin(tilt), -ku * np.sin(t) + kv * np.cos(t) * np.cos(tilt),
                       ku * np.cos(t) + kv * np.sin(t) * np.cos(tilt)], axis=1)
        spectrum = (weights[:, None] * np.exp(-2j * np.pi * coords @ xi.T)).sum(0)
        spectrum = spectrum.reshape(n, n)  # [kv, ku]
        images.append((centred @ spectrum @ centred.T).real / n ** 2)
    return np.array(images)


def test_tike_geometry_pinned_by_a_point_phantom():
    """A blob at p from the centre, projected by tike's forward model, lands at (p . V,
    p . U) of :func:`tike_vectors`; our projector puts a point at p there with theta =
    -degrees(theta_tike), L = degrees(tilt); with tike's theta unnegated it would not."""
    import torch

    from hpc_adept.io.formats import tike_vectors, to_adept_angles, to_adept_laminography
    from hpc_adept.lamino import Geometry, project

    n = 24
    offset = np.array([4.0, -3.0, 2.0])  # (x, y, z) voxels
    theta = np.radians([0.0, 35.0, 80.0, 150.0, 260.0])
    tilt = np.radians(61.0)
    zz, yy, xx = np.indices((n, n, n)) - n // 2  # tike's centre n / 2
    blob = np.exp(-((xx - offset[0]) ** 2 + (yy - offset[1]) ** 2 + (zz - offset[2]) ** 2)
                  / (2 * 1.0 ** 2))
    tike_images = _tike_forward(blob, theta, tilt)
    col, row = tike_vectors(theta, tilt)
    want = np.stack([row @ offset, col @ offset], axis=1)  # (row, col) from the centre
    for k in range(len(theta)):
        np.testing.assert_allclose(_centroid(tike_images[k]) - n // 2, want[k], atol=0.3)
    m = 25  # ours: a point voxel at the same offset from our centre (m - 1) / 2
    volume = torch.zeros((m, m, m), dtype=torch.float64)
    volume[12 + int(offset[2]), 12 + int(offset[1]), 12 + int(offset[0])] = 1.0
    geometry = Geometry(to_adept_angles(theta, "tike"), to_adept_laminography(tilt, "tike"),
                        (m, m, m), (m, m))
    ours = project(volume, geometry).numpy()
    for k in range(len(theta)):
        np.testing.assert_allclose(_centroid(ours[k]) - 12, want[k], atol=0.35)
    unnegated = Geometry(np.degrees(theta), np.degrees(tilt), (m, m, m), (m, m))
    assert np.abs(unnegated.detector_position(offset) - want).max() > 2.0


def test_tike_projections_are_moved_onto_our_centres(tmp_path):
    """tike centres volume and detector at ``n / 2``, we at ``(n - 1) / 2``: a TIFF stack
    of tike's projections (its forward model) read in tike's convention is our projection
    of the same voxel array (PCC 0.9991 measured); taken as it is, half a pixel off on
    every axis, it is not (0.949)."""
    import tifffile
    import torch

    from hpc_adept.io.formats.projections import read_tiff_stack
    from hpc_adept.lamino import Geometry, project
    from hpc_adept.metrics import pcc

    n = 24
    rng = np.random.default_rng(3)
    zz, yy, xx = np.indices((n, n, n)) - n // 2
    volume = sum(np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
                        / (2 * 1.2 ** 2)) for c in rng.uniform(-5, 5, (6, 3)))
    theta = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    tilt = np.radians(61.0)
    tike_images = _tike_forward(volume, theta, tilt)
    tifffile.imwrite(tmp_path / "stack.tif", tike_images.astype(np.float32))
    (tmp_path / "angles.txt").write_text("".join(f"{float(t)!r}\n" for t in theta))
    ps = read_tiff_stack(tmp_path / "stack.tif", tmp_path / "angles.txt",
                         laminography_angle_deg=tilt, pixel_size_m=1e-8,
                         angle_convention="tike")
    ours = project(torch.from_numpy(volume),
                   Geometry(ps.angles_deg, ps.tilt_deg, (n, n, n), (n, n))).numpy()
    as_read = tike_images[np.argsort(-theta, kind="stable")]  # the reader sorts ours
    assert pcc(ps.projections, ours) > 0.998
    assert pcc(as_read, ours) < 0.97
    said = inspect(tmp_path / "stack.tif", "tiff-stack", laminography_angle_deg=tilt,
                   pixel_size_m=1e-8, angles_path=tmp_path / "angles.txt",
                   angle_convention="tike")
    assert "centres: moved from tike's onto ours" in said
    assert "centres" not in inspect(tmp_path / "stack.tif", "tiff-stack",
                                    laminography_angle_deg=61.0, pixel_size_m=1e-8,
                                    angles_path=tmp_path / "angles.txt")


def test_odd_tiff_stack_in_tikes_convention_is_one_error(tmp_path):
    import tifffile

    from hpc_adept.io.formats.projections import read_tiff_stack

    tifffile.imwrite(tmp_path / "stack.tif", np.ones((3, 24, 25), np.float32),
                     photometric="minisblack")
    (tmp_path / "angles.txt").write_text("0.0\n1.0\n2.0\n")
    with pytest.raises(DataError, match="stack.tif: .*even sizes only"):
        read_tiff_stack(tmp_path / "stack.tif", tmp_path / "angles.txt",
                        laminography_angle_deg=1.0, pixel_size_m=1e-8,
                        angle_convention="tike")


def test_centre_shifts_only_where_the_centres_differ():
    from hpc_adept.io.formats import centre_shifts

    angles = [0.0, 90.0, 200.0]
    for convention in ("adept", "ptychoshelves"):
        assert not centre_shifts(angles, 61.0, (24, 24), convention).any()
    for shape in ((24, 24), (25, 25)):  # tomocupy: its axis W / 2, whatever the parity
        assert centre_shifts(angles, 61.0, shape, "tomocupy").tolist() == [[0.0, -0.5]] * 3
    even = centre_shifts(angles, 90.0, (24, 24), "tike")  # tomography: rows see z only
    np.testing.assert_allclose(even[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(even[0], [0.0, 0.0], atol=1e-12)  # (0.5, .) lands at 0.5
    with pytest.raises(ValueError, match="even sizes"):
        centre_shifts(angles, 90.0, (24, 25), "tike")  # tike's FFT centring takes no odd


def _tomocupy_backprojection(data: np.ndarray, theta_deg: np.ndarray, lamino_deg: float,
                             n: int, nz: int) -> np.ndarray:
    """tomocupy's ``backprojection_ker`` (``src/include/kernels_linerec.cuh``, ``sz = 0``)
    with ``phi = pi/2 + lamino_angle/180*pi`` (``reconstruction/linerec.py``): every voxel
    ``(tx, ty, tz)`` sums the linearly interpolated ``data[v, t, u]`` at ``u = R[0](tx -
    n/2) + R[1](ty - n/2) + n/2``, ``v = R[3](tx - n/2) + R[4](ty - n/2) + R[5](tz -
    nz/2) + nz/2`` (``ur = (int)(u - 1e-5)``, kept when ``0 <= ur < n - 1`` and ``0 <= vr
    < nz - 1``) and is written to ``f[tz, n - ty - 1, tx]``. ``data`` is ``[nz, n_theta,
    n]`` (rows, angles, columns)."""
    phi = np.pi / 2 + lamino_deg / 180 * np.pi
    tz, ty, tx = np.indices((nz, n, n), dtype=np.float64)
    out = np.zeros((nz, n, n))
    for t, angle in enumerate(np.radians(theta_deg)):
        r = (np.cos(angle), np.sin(angle), 0.0, np.sin(angle) * np.cos(phi),
             -np.cos(angle) * np.cos(phi), np.sin(phi))
        u = r[0] * (tx - n // 2) + r[1] * (ty - n // 2) + n // 2
        v = r[3] * (tx - n // 2) + r[4] * (ty - n // 2) + r[5] * (tz - nz // 2) + nz // 2
        ur, vr = np.trunc(u - 1e-5).astype(int), np.trunc(v - 1e-5).astype(int)
        ok = (ur >= 0) & (ur < n - 1) & (vr >= 0) & (vr < nz - 1)
        fu, fv = u - ur, v - vr
        ur, vr = np.where(ok, ur, 0), np.where(ok, vr, 0)
        image = data[:, t, :]
        value = (image[vr, ur] * (1 - fu) * (1 - fv) + image[vr, ur + 1] * fu * (1 - fv)
                 + image[vr + 1, ur] * (1 - fu) * fv + image[vr + 1, ur + 1] * fu * fv)
        out += np.where(ok, value, 0.0)
    return out[:, ::-1, :]  # f[tx + (n - ty - 1) * n + tz * n * n]


def test_tomocupy_geometry_pinned_by_a_point_phantom():
    """Our projections of a point with theta = tomocupy's theta and L = 90 - lamino_angle,
    backprojected by tomocupy's kernel, peak at the point (its volume reversed along y, as
    tomocupy writes it); with the angles' sense reversed they do not. The column and row
    steps of :func:`tomocupy_vectors` are ours."""
    import torch

    from hpc_adept.io.formats import to_adept_angles, to_adept_laminography, tomocupy_vectors
    from hpc_adept.lamino import Geometry, project

    n = nz = 21  # odd: tomocupy's centre n/2 (integer division) is our (n - 1) / 2
    c = n // 2
    offset = np.array([4, -3, 2])  # (x, y, z) voxels
    theta = np.arange(0.0, 360.0, 7.5)
    lamino = 25.0
    volume = torch.zeros((nz, n, n), dtype=torch.float64)
    volume[c + offset[2], c + offset[1], c + offset[0]] = 1.0
    geometry = Geometry(to_adept_angles(theta, "tomocupy"),
                        to_adept_laminography(lamino, "tomocupy"), (nz, n, n), (nz, n))
    col, row = tomocupy_vectors(theta, lamino)
    np.testing.assert_allclose(geometry.detector_position(offset.astype(float)),
                               np.stack([row @ offset, col @ offset], 1), atol=1e-9)
    images = project(volume, geometry).numpy()  # [angle, row, col]
    recon = _tomocupy_backprojection(images.transpose(1, 0, 2), theta, lamino, n, nz)
    peak = np.unravel_index(np.argmax(recon), recon.shape)
    assert peak == (c + offset[2], n - 1 - (c + offset[1]), c + offset[0])
    wrong = Geometry(-theta, 90.0 - lamino, (nz, n, n), (nz, n))  # the other sense
    recon = _tomocupy_backprojection(project(volume, wrong).numpy().transpose(1, 0, 2),
                                     theta, lamino, n, nz)
    assert np.unravel_index(np.argmax(recon), recon.shape) != peak


def test_tomocupy_default_axis_is_half_a_pixel_right_of_ours(tmp_path):
    """tomocupy's default rotation axis is column ``W / 2`` (even sizes, as tomocupy
    trims them): our projections of a point at our centre, moved half a pixel right,
    backproject by its kernel to a sharper point than ours as they are; read back in its
    convention, the moved stack is ours again."""
    import tifffile
    import torch

    from hpc_adept.align import shift_images
    from hpc_adept.io.formats import to_adept_angles, to_adept_laminography
    from hpc_adept.io.formats.projections import read_tiff_stack
    from hpc_adept.lamino import Geometry, project

    n = nz = 20
    theta = np.arange(0.0, 360.0, 7.5)
    lamino = 25.0
    volume = torch.zeros((nz, n, n), dtype=torch.float64)
    volume[nz // 2 - 1:nz // 2 + 1, n // 2 - 1:n // 2 + 1, n // 2 - 1:n // 2 + 1] = 1.0
    geometry = Geometry(to_adept_angles(theta, "tomocupy"),
                        to_adept_laminography(lamino, "tomocupy"), (nz, n, n), (nz, n))
    ours = project(volume, geometry).numpy()  # [angle, row, col], axis at (n - 1) / 2
    def moved_right(col_px: float) -> np.ndarray:
        shifts = torch.tensor([[0.0, col_px]], dtype=torch.float64).expand(len(theta), 2)
        return shift_images(torch.from_numpy(ours), shifts, pad=2).numpy()

    def sharpness(images: np.ndarray) -> float:
        recon = _tomocupy_backprojection(images.transpose(1, 0, 2), theta, lamino, n, nz)
        return float(np.sort(recon.ravel())[-8:].sum() / np.abs(recon).sum())

    for_tomocupy = moved_right(0.5)
    sharpest = sharpness(for_tomocupy)  # its kernel's axis: half a pixel right of ours
    assert sharpest > 1.05 * sharpness(ours)
    assert sharpest > max(sharpness(moved_right(0.25)), sharpness(moved_right(0.75)))
    tifffile.imwrite(tmp_path / "stack.tif", for_tomocupy.astype(np.float32))
    (tmp_path / "angles.txt").write_text("".join(f"{t!r}\n" for t in theta.tolist()))
    ps = read_tiff_stack(tmp_path / "stack.tif", tmp_path / "angles.txt",
                         laminography_angle_deg=lamino, pixel_size_m=1e-8,
                         angle_convention="tomocupy")
    order = np.argsort(to_adept_angles(theta, "tomocupy"), kind="stable")
    assert np.abs(ps.projections - ours[order]).max() < 0.03 * ours.max()
    assert np.abs(for_tomocupy - ours).max() > 0.2 * ours.max()  # as it was handed in


# --------------------------------------------------------------------------- LYNX


def test_lynx_files_read_as_lamni_eiger(tmp_path):
    """APS 31-ID-E LYNX keeps LamNI's legacy layout: ptychodus 1.7.0
    ``plugins/aps31id_lynx_diffraction_file.py`` (``/entry/data/eiger_4`` with
    ``Center_x_pixel``, ``Center_y_pixel``, ``Detector_distance_m``, ``Exposure_time``,
    ``Photon_energy_kev``, ``Pixel_size``), ``aps31id_lynx_orchestra_position_file.py``
    (Orchestra header, ``DataPoint`` index, x column 3, y column 6, ``-um * 1e-6``) and
    ``aps31id_lynx_sgz_position_file.py`` (raw ``DataPoint x_st_fzp y_st_fzp
    ckUser_Clk_Count Detector_Count``: ``Detector_Count`` runs 1..N, frame ``count - 1``
    as ``plugins/aps31id_lamni/position_file.py`` explains)."""
    scan = _scan(-35.0)
    eiger = tmp_path / "lynx_00042.h5"
    write_eiger(eiger, scan)
    with h5py.File(eiger, "a") as f:
        f["/entry/data/eiger_4"].attrs["Exposure_time"] = 0.1
    orchestra = tmp_path / "scan_00042.dat"
    write_positions(orchestra, scan, 42, 0.0)
    sgz = tmp_path / "scan_00042_sgz.dat"
    rows = [f"{k} {-x * 1e6:.12g} {-y * 1e6:.12g} {1000 * k} {k + 1}"
            for k, (x, y, _) in enumerate(scan.positions_m)]
    sgz.write_text("Scan 00042, lsamrot_encoder 0.0\nDataPoint x_st_fzp y_st_fzp "
                   "ckUser_Clk_Count Detector_Count\n" + "\n".join(rows[::-1]) + "\n")
    assert detect_format(eiger) == "lamni-eiger"
    for positions in (orchestra, sgz):
        read = read_scans(eiger, positions_path=positions, roi_px=FRAME,
                          laminography_angle_deg=LAMINO, rotation_angle_deg=-35.0 - 90.0)[0]
        order = np.argsort(read.positions_m[:, 0] + 1e-3 * read.positions_m[:, 1])
        want = np.argsort(scan.positions_m[:, 0] + 1e-3 * scan.positions_m[:, 1])
        np.testing.assert_allclose(read.positions_m[order], scan.positions_m[want], atol=1e-14)
        np.testing.assert_array_equal(read.counts[order], scan.counts[want])
        assert read.rotation_angle_deg == pytest.approx(-35.0)


def write_spec_file(path: Path, scans: dict[int, Scan], motors=("px", "py")) -> None:
    """A spec data file holding step scans ``#S n``, as spec writes it (certif.com's spec
    manual, "Standard Data File Format": ``#F``/``#E``/``#D`` file header, per scan ``#S n
    command``, ``#D``, ``#P0`` motor positions, ``#N`` column count, ``#L`` names separated
    by two spaces, rows of numbers, ``#C`` comments anywhere) and fold_slice
    ``+scans/+positions/spec.m`` reads it: ``positions_real = [py*1e-6 px*1e-6]`` (motors
    in micrometres, one row per frame), negated by ``+core/ptycho_adjust_positions.m``."""
    labels = ["Epoch", "Time Stamp", motors[0], motors[1], "bpm4i", "diode"]
    out = ["#F specES1_started_2026_12_04.dat", "#E 1764806400", "#D Fri Dec 04 2026", ""]
    for number, scan in scans.items():
        out += [f"#S {number}  round_roi_scan 12 12 1.5 1 0.1", "#D Fri Dec 04 2026",
                "#P0 12.5 -3.25 0 0", f"#N {len(labels)}", "#L " + "  ".join(labels)]
        for k, (x, y, _) in enumerate(scan.positions_m):
            out.append(f"{k} {1000 + k} {-x * 1e6:.12g} {-y * 1e6:.12g} 512 7")
            if k == 1:
                out.append("#C beam check")
        out.append("")
    path.write_text("\n".join(out))


def test_lamni_eiger_with_positions_from_the_spec_file(tmp_path):
    """``data.positions_path`` naming the beamline's spec file: the block of the Eiger
    file's scan number, its ``px`` / ``py`` columns (or ``data.spec_motors``)."""
    scan, other = _scan(-35.0), _scan(10.0, seed=3)
    eiger = tmp_path / "run_00042_000000000000.h5"
    write_eiger(eiger, scan)
    spec = tmp_path / "specES1_started.dat"
    write_spec_file(spec, {41: other, 42: scan})
    common = {"positions_path": spec, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": -35.0 - 90.0}
    read = read_scans(eiger, **common)[0]
    np.testing.assert_allclose(read.positions_m, scan.positions_m, atol=1e-14)
    np.testing.assert_array_equal(read.counts, scan.counts)
    write_spec_file(spec, {42: scan}, motors=("samx", "samy"))
    with pytest.raises(DataError) as exc:
        read_scans(eiger, **common)
    assert "no column px, py" in _one_line(exc) and "data.spec_motors" in _one_line(exc)
    read = read_scans(eiger, spec_motors=("samx", "samy"), **common)[0]
    np.testing.assert_allclose(read.positions_m, scan.positions_m, atol=1e-14)
    write_spec_file(spec, {41: other})
    with pytest.raises(DataError) as exc:
        read_scans(eiger, **common)
    assert "no scan 42" in _one_line(exc)
    write_spec_file(spec, {42: scan})
    spec.write_text(spec.read_text().replace("round_roi_scan", "cont_line px -6 6 20 0.1"))
    with pytest.raises(DataError) as exc:
        read_scans(eiger, **common)
    assert "continuous line scan" in _one_line(exc)


def test_spec_file_edge_cases(tmp_path, caplog):
    """A repeated scan number (the last block, with a warning), ``@A`` MCA lines and their
    continuations skipped, a tab-separated ``#L``; and each bad block one error line."""
    from hpc_adept.io.formats.spec_positions import read_spec_positions

    scan, other = _scan(-35.0), _scan(10.0, seed=3)
    spec = tmp_path / "spec.dat"
    write_spec_file(spec, {42: other})
    write_spec_file(tmp_path / "second.dat", {42: scan})
    second = (tmp_path / "second.dat").read_text().split("\n", 4)[4]  # no file header
    lines = second.splitlines()
    lines.insert(6, "@A 1 2 3 \\")
    lines.insert(7, " 4 5 6")
    lines[4] = lines[4].replace("  ", "\t")
    spec.write_text(spec.read_text() + "\n" + "\n".join(lines) + "\n")
    _, positions = read_spec_positions(spec, 42)
    np.testing.assert_allclose(positions, scan.positions_m, atol=1e-14)
    assert "appears 2 times" in caplog.text
    bad = {"no #L line": lambda t: t.replace("#L ", "#C "),
           "a row of 5 values": lambda t: t.replace(" 512 7\n", " 512\n", 1),
           "not a number": lambda t: re.sub(r"\n1 1001 \S+", "\n1 1001 x", t),
           "no data rows": lambda t: "\n".join(ln for ln in t.splitlines()
                                                if ln.startswith(("#", "@")) or not ln)}
    for message, change in bad.items():
        write_spec_file(spec, {42: scan})
        spec.write_text(change(spec.read_text()))
        with pytest.raises(DataError) as exc:
            read_spec_positions(spec, 42)
        assert message in _one_line(exc), message


@pytest.mark.parametrize("name, number", [
    ("S00999_master.h5", 999), ("lynx_00042.h5", 42), ("run_00123_master.h5", 123),
    ("run_00042_000000000000.h5", 42), ("e20631_S00042_master.h5", 42),
    ("sample12345_00042.h5", 42), ("scan_00007.h5", 7), ("ptycho_123.h5", 123)])
def test_scan_number_from_the_file_name(name, number):
    from hpc_adept.io.formats.lamni import _scan_number

    assert _scan_number(Path(name)) == number


def test_burst_frames_reach_every_raw_reader_and_only_those(tmp_path):
    """``data.burst_frames`` through the config's reader options to the lamni-tomo folder
    and Velociprobe readers (7 frames are no whole number of bursts of 2); other formats
    refuse it; a LamNI position file given to a master detected as Velociprobe names the
    format to set."""
    from hpc_adept.config import DataConfig
    from hpc_adept.io.formats.source import reader_options

    options = reader_options(DataConfig(burst_frames=2, spec_motors=("samx", "samy")))
    assert options["burst_frames"] == 2 and options["spec_motors"] == ("samx", "samy")
    write_tomo_folder(tmp_path / "tomo", _tomo_scans())
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "tomo", roi_px=FRAME, laminography_angle_deg=LAMINO,
                   burst_frames=2)
    assert "bursts of 2" in _one_line(exc)
    scan = _scan(15.0)
    master, positions = write_velociprobe(tmp_path / "v", scan)
    common = {"roi_px": FRAME, "laminography_angle_deg": LAMINO, "rotation_angle_deg": 15.0}
    with pytest.raises(DataError) as exc:
        read_scans(master, positions_path=positions, burst_frames=2, **common)
    assert "bursts of 2" in _one_line(exc)
    orchestra = tmp_path / "scan_00042.dat"
    write_positions(orchestra, scan, 42, 0.0)
    with pytest.raises(DataError) as exc:
        read_scans(master, positions_path=orchestra, **common)
    assert "data.format: lamni-eiger" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "tomo" / "specES1" / "dat-files" / "tomography_scannumbers.txt",
                   "tiff-stack", burst_frames=2)
    assert "burst_frames" in _one_line(exc)


def test_burst_frames_are_summed_per_scan_point(tmp_path):
    """Two exposures per scan point (fold_slice's ``p.detector.burst_frames = 2``:
    consecutive frames of one point): ``data.burst_frames: 2`` sums them into the point's
    frame; read as one frame per point they would pair frames with the wrong points, so the
    whole multiple is one error line naming the setting."""
    scan = _scan(-35.0)
    eiger = tmp_path / "lynx_00042.h5"
    write_eiger(eiger, scan)
    with h5py.File(eiger, "a") as f:  # each frame split into two exposures, gaps in both
        attrs = dict(f["/entry/data/eiger_4"].attrs)
        frames = f["/entry/data/eiger_4"][()]
        first = np.where(frames == np.iinfo(np.uint32).max, frames, frames // 2)
        second = np.where(frames == np.iinfo(np.uint32).max, frames, frames - first)
        del f["/entry/data/eiger_4"]
        f["/entry/data/eiger_4"] = np.stack([first, second], 1).reshape(-1, *frames.shape[1:])
        f["/entry/data/eiger_4"].attrs.update(attrs)
    counts = np.rint(scan.counts)
    orchestra = tmp_path / "scan_00042.dat"
    write_positions(orchestra, scan, 42, 0.0)
    common = {"positions_path": orchestra, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": -35.0 - 90.0}
    with pytest.raises(DataError) as exc:
        read_scans(eiger, **common)
    assert "set data.burst_frames: 2" in _one_line(exc)
    read = read_scans(eiger, burst_frames=2, **common)[0]
    order = np.argsort(read.positions_m[:, 0] + 1e-3 * read.positions_m[:, 1])
    want = np.argsort(scan.positions_m[:, 0] + 1e-3 * scan.positions_m[:, 1])
    np.testing.assert_array_equal(read.counts[order], counts[want])
    with pytest.raises(DataError) as exc:
        read_scans(eiger, burst_frames=3, **common)
    assert "not a whole number of bursts of 3" in _one_line(exc)


# --------------------------------------------------------------------------- Velociprobe


def write_dectris_master(folder: Path, stem: str, scan: Scan, chi_deg: float = 0.0) -> Path:
    """``<stem>_master.h5`` and its ``<stem>_data_%06d.h5`` files (the frames split over
    two), as the DECTRIS SIMPLON API writes them (ptychodus 1.7.0
    ``plugins/aps33id_velociprobe/aps33id_velociprobe_diffraction_file.py``:
    ``/entry/data/data_000001`` (``num_patterns_per_array = shape[0]``), every
    ``h5py.ExternalLink`` of ``/entry/data`` a frame array beside the master;
    ``DetectorGroup.read`` (``detector_distance`` units ``b'm'``, ``beam_center_x/y``
    ``b'pixel'``, ``bit_depth_readout``, ``x/y_pixel_size`` ``b'm'``),
    ``DetectorSpecificGroup.read`` (``nimages``, ``ntrigger``, ``photon_energy``
    ``b'eV'``, ``x/y_pixels_in_detector``), ``GoniometerGroup.read`` (``chi``
    ``b'degree'``)); one more link than files (tike ``read_aps_2idd``: "the master file is
    created before the linked files")."""
    folder.mkdir(parents=True, exist_ok=True)
    frames, centre = _detector_frames(scan)
    n, shape = len(frames), frames.shape[1:]
    master = folder / f"{stem}_master.h5"
    with h5py.File(master, "w") as f:
        for k, (start, stop) in enumerate(((0, 4), (4, n)), start=1):
            name = f"{stem}_data_{k:06d}.h5"
            with h5py.File(folder / name, "w") as g:
                g.create_dataset("/entry/data/data", data=frames[start:stop])
            f[f"/entry/data/data_{k:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        f["/entry/data/data_000003"] = h5py.ExternalLink(f"{stem}_data_000003.h5",
                                                         "/entry/data/data")
        det = f.create_group("/entry/instrument/detector")
        for key, value, units in (("detector_distance", scan.distance_m, b"m"),
                                  ("beam_center_x", float(centre[1]), b"pixel"),
                                  ("beam_center_y", float(centre[0]), b"pixel"),
                                  ("x_pixel_size", scan.x_pixel_size_m, b"m"),
                                  ("y_pixel_size", scan.y_pixel_size_m, b"m")):
            det[key] = value
            det[key].attrs["units"] = units
        det["bit_depth_readout"] = 32
        spec = det.create_group("detectorSpecific")
        spec["nimages"], spec["ntrigger"] = n, 1
        spec["photon_energy"] = scan.energy_ev
        spec["photon_energy"].attrs["units"] = b"eV"
        spec["x_pixels_in_detector"], spec["y_pixels_in_detector"] = shape[1], shape[0]
        f["/entry/sample/goniometer/chi"] = [chi_deg]
        f["/entry/sample/goniometer/chi"].attrs["units"] = b"degree"
    return master


def write_velociprobe(folder: Path, scan: Scan, chi_deg: float = 0.0) -> tuple[Path, Path]:
    """A Velociprobe master file, its frame files and its position CSV.

    - the master and its data files: :func:`write_dectris_master`;
    - ``aps33id_velociprobe_position_file.py``: comma-separated, >= 8 columns, x nm in
      column 1, laser-interferometer y nm in column 2, trigger in column 7 (tike's
      docstring: ``samz, samx, samy, zpx, zpy, encoder y, encoder x, trigger``); one
      trigger written twice (averaged), rows out of order.
    """
    master = write_dectris_master(folder, "fly042", scan, chi_deg)
    nm = np.rint(scan.positions_m[:, :2] * 1e9).astype(int)
    rows = [f"0,{x},{y},0,0,{-y},{x},{k}" for k, (x, y) in enumerate(nm)]
    rows.append(f"0,{nm[2, 0] + 6},{nm[2, 1] - 4},0,0,0,0,2")  # trigger 2 again
    rows[2] = f"0,{nm[2, 0] - 6},{nm[2, 1] + 4},0,0,0,0,2"
    positions = folder / "fly042_pos.csv"
    positions.write_text("# samz,samx,samy,zpx,zpy,ency,encx,trigger\n"
                         + "\n".join(rows[::-1]) + "\n")
    return master, positions


@pytest.mark.parametrize("chi", [0.0, 30.0])
def test_velociprobe_round_trip(tmp_path, chi):
    scan = _scan(15.0)
    master, positions = write_velociprobe(tmp_path, scan, chi)
    assert detect_format(master) == "velociprobe"
    read = read_scans(master, positions_path=positions, roi_px=FRAME,
                      laminography_angle_deg=LAMINO, rotation_angle_deg=15.0)[0]
    np.testing.assert_array_equal(read.counts, scan.counts)
    want = scan.positions_m - scan.positions_m.mean(axis=0)
    want[:, 0] *= np.cos(np.radians(chi))
    np.testing.assert_allclose(read.positions_m, want, atol=1e-9)
    assert read.energy_ev == pytest.approx(scan.energy_ev)
    assert read.distance_m == pytest.approx(scan.distance_m)
    assert read.x_pixel_size_m == pytest.approx(PIXEL_M)
    assert read.mask is not None and not read.mask.any()


def test_master_with_its_frame_arrays_copied_in(tmp_path):
    """A master whose external links were expanded into it (``h5copy --expand-ext-links``,
    ``h5py``'s ``copy(..., expand_external=True)``): the ``data_%06d`` datasets of the file
    itself are the frames, in name order, as the linked files would be."""
    scan = _scan(15.0)
    master, positions = write_velociprobe(tmp_path / "linked", scan)
    flat = tmp_path / "flat_master.h5"
    with h5py.File(master, "r") as src, h5py.File(flat, "w") as dst:
        group = dst.create_group("/entry/data", track_order=True)  # lists in creation order
        for name in ("data_000002", "data_000001"):  # the second array first on disk
            src.copy(f"/entry/data/{name}", group, name=name, expand_external=True)
        for key in ("/entry/instrument", "/entry/sample"):
            src.copy(key, dst.require_group("/entry"))
        dst["/entry/data/comment"] = "not frames: no data_%06d name"
    with h5py.File(flat, "r") as f:
        assert isinstance(f["/entry/data"].get("data_000001", getlink=True), h5py.HardLink)
    assert detect_format(flat) == "velociprobe"
    common = {"positions_path": positions, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": 15.0}
    with h5py.File(flat, "r") as f:
        assert list(f["/entry/data"])[:2] == ["data_000002", "data_000001"]
    np.testing.assert_array_equal(read_scans(flat, **common)[0].counts, scan.counts)


def test_master_linking_data_files_in_a_subfolder(tmp_path):
    """A master whose links name data files in a folder below it (``data/...``) reads them;
    a symbolic link out of the master's folder is refused."""
    scan = _scan(15.0)
    master, positions = write_velociprobe(tmp_path, scan)
    (tmp_path / "data").mkdir()
    with h5py.File(master, "a") as f:
        for k in (1, 2):
            name = f"fly042_data_{k:06d}.h5"
            (tmp_path / name).rename(tmp_path / "data" / name)
            del f[f"/entry/data/data_{k:06d}"]
            f[f"/entry/data/data_{k:06d}"] = h5py.ExternalLink(f"data/{name}",
                                                               "/entry/data/data")
    common = {"positions_path": positions, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": 15.0}
    np.testing.assert_array_equal(read_scans(master, **common)[0].counts, scan.counts)
    outside = tmp_path.parent / f"{tmp_path.name}_outside"
    (tmp_path / "data").rename(outside)
    (tmp_path / "data").symlink_to(outside)
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "resolves outside the master's folder" in _one_line(exc)


def test_negative_pixels_of_signed_frames_are_masked(tmp_path):
    """Signed frames with PILATUS-style flags (-1 gap, -2 bad pixel) inside the crop: those
    pixels are masked in every frame, the others read unchanged."""
    scan = _scan(15.0)
    master, positions = write_velociprobe(tmp_path, scan)
    for k in (1, 2):
        with h5py.File(tmp_path / f"fly042_data_{k:06d}.h5", "a") as g:
            stored = g["/entry/data/data"][()]
            frames = np.where(stored == np.iinfo(np.uint32).max, -1, stored).astype(np.int32)
            if k == 1:
                frames[0, CENTRE_RC[0] - 3, CENTRE_RC[1] + 2] = -2
            del g["/entry/data/data"]
            g["/entry/data/data"] = frames
    read = read_scans(master, positions_path=positions, roi_px=FRAME,
                      laminography_angle_deg=LAMINO, rotation_angle_deg=15.0)[0]
    bad = (FRAME // 2 - 3, FRAME // 2 + 2)
    assert read.mask is not None and read.mask[bad] and read.mask.sum() == 1
    keep = ~read.mask
    np.testing.assert_array_equal(read.counts[:, keep], scan.counts[:, keep])
    assert (read.counts[:, bad[0], bad[1]] == 0).all()


def test_velociprobe_chi_written_once_per_image(tmp_path):
    """The Eiger writes ``/entry/sample/goniometer/chi`` as one value per image (with
    ``chi_start``, ``chi_increment``): ptychodus ``aps33id_velociprobe_diffraction_file.py``
    ``GoniometerGroup.read`` (l.143-160) takes ``float(chi_item[0])`` of such a 1-D
    dataset. Read as that one chi; values that vary over the images are one error line."""
    scan = _scan(0.0)
    master, positions = write_velociprobe(tmp_path, scan)
    with h5py.File(master, "a") as f:
        del f["/entry/sample/goniometer/chi"]
        f["/entry/sample/goniometer/chi"] = np.full(scan.n_positions, 30.0)
        f["/entry/sample/goniometer/chi"].attrs["units"] = b"degree"
        f["/entry/sample/goniometer/chi_start"] = 30.0
        f["/entry/sample/goniometer/chi_increment"] = 0.0
    common = {"positions_path": positions, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": 0.0}
    read = read_scans(master, **common)[0]
    want = scan.positions_m - scan.positions_m.mean(axis=0)
    want[:, 0] *= np.cos(np.radians(30.0))
    np.testing.assert_allclose(read.positions_m, want, atol=1e-9)
    with h5py.File(master, "a") as f:
        f["/entry/sample/goniometer/chi"][1] = 31.0
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "chi varies" in _one_line(exc)
    with h5py.File(master, "a") as f:  # one value again, in the wrong unit
        f["/entry/sample/goniometer/chi"][1] = 30.0
        f["/entry/sample/goniometer/chi"].attrs["units"] = b"rad"
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "expected 'degree'" in _one_line(exc)


def test_dectris_pixel_mask_flags_pixels(tmp_path):
    """The master's ``detectorSpecific/pixel_mask`` (uint32, nonzero = gap / dead / noisy;
    a converter such as PSI's hdf5maker fills the gaps with 0 and marks them there only):
    its pixels are masked, cropped like the frames; a mask of another shape is refused."""
    scan = _scan(0.0)
    master, positions = write_velociprobe(tmp_path, scan)
    _, centre = _detector_frames(scan)
    with h5py.File(master, "a") as f:
        shape = (int(f["/entry/instrument/detector/detectorSpecific/y_pixels_in_detector"][()]),
                 int(f["/entry/instrument/detector/detectorSpecific/x_pixels_in_detector"][()]))
        flags = np.zeros(shape, np.uint32)
        gap_row = int(round(centre[0]))
        flags[gap_row, :] = 1   # a module gap
        flags[gap_row + 2, int(round(centre[1]))] = 16  # a noisy pixel
        f["/entry/instrument/detector/detectorSpecific/pixel_mask"] = flags
    common = {"positions_path": positions, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": 0.0}
    read = read_scans(master, **common)[0]
    assert read.mask is not None and read.mask.sum() == FRAME + 1
    flagged_rows = np.nonzero(read.mask.all(axis=1))[0]
    assert len(flagged_rows) == 1 and read.mask[flagged_rows[0] + 2].sum() == 1
    assert not read.counts[:, read.mask].any()
    with h5py.File(master, "a") as f:
        del f["/entry/instrument/detector/detectorSpecific/pixel_mask"]
        f["/entry/instrument/detector/detectorSpecific/pixel_mask"] = flags[:-1]
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "pixel_mask" in _one_line(exc)


def test_bad_velociprobe_files(tmp_path):
    scan = _scan(0.0)
    master, positions = write_velociprobe(tmp_path, scan)
    common = {"positions_path": positions, "roi_px": FRAME, "laminography_angle_deg": LAMINO,
              "rotation_angle_deg": 0.0}
    with pytest.raises(DataError) as exc:
        read_scans(master, **{**common, "positions_path": None})
    assert "data.positions_path" in _one_line(exc)
    with h5py.File(master, "a") as f:
        f["/entry/instrument/detector/detector_distance"].attrs["units"] = b"mm"
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "units 'mm'" in _one_line(exc)
    with h5py.File(master, "a") as f:
        f["/entry/instrument/detector/detector_distance"].attrs["units"] = b"m"
        del f["/entry/data/data_000001"]
        f["/entry/data/data_000001"] = h5py.ExternalLink("/etc/passwd.h5", "/x")
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "not a file in the master's folder" in _one_line(exc)
    with h5py.File(master, "a") as f:
        del f["/entry/data/data_000001"]
        f["/entry/data/data_000001"] = h5py.ExternalLink("../b/fly042_data_000001.h5", "/x")
    with pytest.raises(DataError) as exc:
        read_scans(master, **common)
    assert "not a file in the master's folder" in _one_line(exc)
    master, positions = write_velociprobe(tmp_path / "b", scan)
    positions.write_text("0,1,2,3\n")
    with pytest.raises(DataError) as exc:
        read_scans(master, **{**common, "positions_path": positions})
    assert "at least 8" in _one_line(exc)
    positions.write_text("0,1,2,0,0,0,0,99\n")
    with pytest.raises(DataError) as exc:
        read_scans(master, **{**common, "positions_path": positions})
    assert "outside the 7 frames" in _one_line(exc)


# --------------------------------------------------------------------------- bad input, CLI


@pytest.mark.parametrize(("settings", "needle"), [
    (["data.path=lamni_bad"], "data.roi_px"),
    (["data.path=lamni_bad", "data.roi_px=32", "data.rotation_angles_deg=[1, 2]"],
     "angle table and position files give"),
    (["data.path=lamni_bad", "data.roi_px=32", "data.positions_path=lamni_bad"],
     "remove data.rotation_angles_deg / data.angles_path / data.positions_path"),
    (["data.path=lamni_bad", "data.roi_px=32", "data.scan_range=[5000, 6000]"], "no scan"),
    (["data.path=lamni_bad", "data.roi_px=32", "data.scan_range=[9, 2]"], "first 9 is after"),
    (["data.path=psi_bad", f"data.laminography_angle_deg={LAMINO}"], "data.energy_ev"),
    (["data.path=psi_bad", "data.scan_step=2"], "select scans of a lamni-tomo folder"),
])
def test_bad_raw_input_is_one_line_and_nothing_written(work, settings, needle):  # noqa: F811
    from .test_real_data import _scans

    work, _ = work
    if not (work / "lamni_bad").exists():
        scans = _scans(work)[:2]
        write_tomo_folder(work / "lamni_bad", {1: scans[0], 2: scans[1]})
        write_ptychoshelves_prepared(work / "psi_bad" / "S00001", 1, scans[0])
    result = adept("run", "-c", "c.yaml", "--set", "output.dir=run_raw_bad", *settings,
                   cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (work / "run_raw_bad" / "projections.h5").exists()
    assert not (work / "run_raw_bad" / "ptycho").exists()


def test_eiger_frames_that_are_not_numbers_are_one_data_error(tmp_path):
    """A frame dataset of strings (or any non-numeric dtype) is a DataError naming it, not
    a conversion traceback."""
    scan = _scan(0.0)
    eiger = tmp_path / "lynx_00042.h5"
    write_eiger(eiger, scan)
    orchestra = tmp_path / "scan_00042.dat"
    write_positions(orchestra, scan, 42, 0.0)
    with h5py.File(eiger, "a") as f:
        attrs = dict(f["/entry/data/eiger_4"].attrs)
        shape = f["/entry/data/eiger_4"].shape
        del f["/entry/data/eiger_4"]
        ds = f.create_dataset("/entry/data/eiger_4", shape=shape, dtype=h5py.string_dtype())
        ds.attrs.update(attrs)
    with pytest.raises(DataError) as exc:
        read_scans(eiger, positions_path=orchestra, roi_px=FRAME,
                   laminography_angle_deg=LAMINO, rotation_angle_deg=0.0)
    assert "/entry/data/eiger_4" in _one_line(exc) and "not numeric" in _one_line(exc)
