"""Readers of other programs' files (hpc_adept.io.formats, issue 19).

Every fixture file is written with h5py following the writing program's own code line by
line (the lines are cited beside each writer). Where the program installs from PyPI
(ptychodus 1.7.0), a further test lets it write the files itself, in a subprocess of a
separate virtual environment (ADEPT_PTYCHODUS_PYTHON, default /tmp/ptyvenv/bin/python),
and is skipped when that environment is absent.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_adept.errors import DataError
from hpc_adept.io.cxi import ELEMENTARY_CHARGE_C, PLANCK_TIMES_C_JM, Scan, write_cxi
from hpc_adept.io.formats import (
    detect_format,
    inspect,
    ptychoshelves_vectors,
    read_angle_file,
    read_projection_set,
    read_scans,
    to_adept_angles,
    to_adept_laminography,
)
from hpc_adept.io.formats.phase import object_phase, remove_plane

ENERGY_EV = 6200.0
DISTANCE_M = 2.5
PIXEL_M = 75e-6
FRAME = 16
LAMINO = 61.1


def _wavelength() -> float:
    return PLANCK_TIMES_C_JM / (ENERGY_EV * ELEMENTARY_CHARGE_C)


def _object_pixel() -> float:
    return _wavelength() * DISTANCE_M / (FRAME * PIXEL_M)


def _scan(angle_deg: float = 30.0, n: int = 7, seed: int = 0) -> Scan:
    """A simulated scan: asymmetric counts and positions on both sides of 0."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(5.0, (n, FRAME, FRAME)).astype(np.float32)
    counts[:, FRAME // 2, FRAME // 2] += 1000.0
    dx = _object_pixel()
    positions = np.zeros((n, 3))
    positions[:, 0] = (np.arange(n) - 2.0) * 3.0 * dx  # x: -6..+12 px
    positions[:, 1] = -(np.arange(n) % 3) * 2.0 * dx   # y: 0, -2, -4 px
    return Scan(counts=counts, positions_m=positions, energy_j=ENERGY_EV * ELEMENTARY_CHARGE_C,
                distance_m=DISTANCE_M, x_pixel_size_m=PIXEL_M, y_pixel_size_m=PIXEL_M,
                rotation_angle_deg=angle_deg, laminography_angle_deg=LAMINO)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- fold_slice


def write_foldslice(folder: Path, scan: Scan, label: str = "0_Ndp16",
                    with_header: bool = True, transpose: bool = True) -> Path:
    """fold_slice prepared data, as fold_slice reads it.

    - ``ptycho/+scans/get_filenames_aps.m`` l.14: ``<scan dir>/data_roi<label>_dp.hdf5``.
    - ``ptycho/+detector/+prep_data/+matlab_aps/load_data.m``: ``h5read(file, '/dp')``
      (each frame transposed), then ``det.orientation(1)`` -> ``permute(data, [2 1 3])``:
      with an Eiger (``eiger_APS.m``: ``[1 0 0]``) fold_slice's frame is h5py's, so we store
      ``counts``; without the transpose (``empad.m``: ``[0 0 0]``) we store
      ``counts.swapaxes(1, 2)``. gzip level 4 (FORMATS.md).
    - ``ptycho/+scans/+positions/hdf5_pos.m`` l.9-18: ``/ppX``, ``/ppY`` in
      ``data_roi<label>_para.hdf5``, ``positions_real = [-ppY, -ppX]``; with
      ``+core/ptycho_adjust_positions.m`` (``positions_real = -positions_real``,
      ``positions = positions_real ./ dx_spec``) the window moves with (+ppY, +ppX).
    - ptychodus 1.7.0 ``plugins/fold_slice/position_file.py`` l.17-19: ``/lambda``,
      ``/dx``, ``/angle`` (PtychoShelves angle = ours - 90).
    """
    folder.mkdir(parents=True, exist_ok=True)
    dp = folder / f"data_roi{label}_dp.hdf5"
    with h5py.File(dp, "w") as f:
        frames = scan.counts if transpose else np.swapaxes(scan.counts, 1, 2)
        f.create_dataset("dp", data=frames, compression="gzip", compression_opts=4)
    with h5py.File(folder / f"data_roi{label}_para.hdf5", "w") as f:
        f["ppX"] = scan.positions_m[:, 0]
        f["ppY"] = scan.positions_m[:, 1]
        if with_header:
            f["lambda"] = _wavelength()
            f["dx"] = _object_pixel()
            f["angle"] = scan.rotation_angle_deg - 90.0
    return dp


def _assert_same(read: Scan, scan: Scan) -> None:
    np.testing.assert_array_equal(read.counts, scan.counts)
    np.testing.assert_allclose(read.positions_m, scan.positions_m, rtol=0, atol=1e-15)
    assert read.energy_j == pytest.approx(scan.energy_j, rel=1e-9)
    assert read.distance_m == pytest.approx(scan.distance_m, rel=1e-9)
    assert read.x_pixel_size_m == pytest.approx(scan.x_pixel_size_m, rel=1e-9)
    assert read.rotation_angle_deg == pytest.approx(scan.rotation_angle_deg, abs=1e-9)
    assert read.laminography_angle_deg == pytest.approx(scan.laminography_angle_deg)


def test_foldslice_round_trip(tmp_path):
    scans = [_scan(a, seed=i) for i, a in enumerate((50.0, -10.0, 20.0))]
    for i, scan in enumerate(scans):
        write_foldslice(tmp_path / f"S{i:05d}", scan)
    assert detect_format(tmp_path) == "foldslice-prepared"
    read = read_scans(tmp_path, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    assert [s.rotation_angle_deg for s in read] == pytest.approx([-10.0, 20.0, 50.0])
    for got in read:
        want = next(s for s in scans if abs(s.rotation_angle_deg - got.rotation_angle_deg) < 1e-6)
        _assert_same(got, want)


def test_foldslice_orientation_follows_its_forward_model(tmp_path):
    """Frames made the fold_slice way (window at (ppY, ppX) / dx in MATLAB's image) are
    our frames of the same object at our positions (x = ppX along columns, y = ppY)."""
    from hpc_adept.sim.ptychography import diffraction_patterns, make_probe

    rng = np.random.default_rng(3)
    m, pad, n = 24, 16, FRAME
    obj = np.exp(1j * rng.uniform(0, 2, (m + 2 * pad, m + 2 * pad)))
    probe = make_probe(n, 8.0)
    dx = _object_pixel()
    rc = np.array([[0, 0], [3, -5], [-4, 6], [7, 2]], dtype=float)  # (row, col) px
    pp_y, pp_x = rc[:, 0] * dx, rc[:, 1] * dx
    # ptycho_adjust_positions.m: positions = [ppY, ppX] / dx_spec - min(...) (+ pad).
    window = np.round(np.stack([pp_y, pp_x], 1) / dx - (np.stack([pp_y, pp_x], 1) / dx).min(0))
    origin = np.array([pad + (m - n) / 2, pad + (m - n) / 2]) + rc.min(0)
    frames = []
    for r, c in (window + origin).astype(int):
        far = np.fft.fftshift(np.fft.fft2(probe * obj[r:r + n, c:c + n], norm="ortho"))
        frames.append(np.abs(far) ** 2)  # fold_slice's fmag(:,:,k).^2, [row, col]
    scan = Scan(counts=np.array(frames), positions_m=np.stack([pp_x, pp_y, 0 * pp_x], 1),
                energy_j=ENERGY_EV * ELEMENTARY_CHARGE_C, distance_m=DISTANCE_M,
                x_pixel_size_m=PIXEL_M, y_pixel_size_m=PIXEL_M, rotation_angle_deg=0.0,
                laminography_angle_deg=LAMINO)
    dp = write_foldslice(tmp_path, scan)
    read = read_scans(dp, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)[0]
    empad = write_foldslice(tmp_path / "empad", scan, transpose=False)
    read_empad = read_scans(empad, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M,
                            foldslice_orientation=(0, 0, 0))[0]
    np.testing.assert_array_equal(read_empad.counts, read.counts)
    positions_px = read.positions_m[:, [1, 0]] / dx  # ours: (row, col) = (y, x) / dx
    ours = diffraction_patterns(obj, pad, (m, m), probe, positions_px)
    np.testing.assert_allclose(read.counts, ours, rtol=1e-4, atol=1e-6)


def test_foldslice_supplied_values_and_conflicts(tmp_path):
    scan = _scan(12.0)
    dp = write_foldslice(tmp_path, scan, with_header=False)
    with pytest.raises(DataError) as exc:
        read_scans(dp, laminography_angle_deg=LAMINO)
    assert "/lambda" in _one_line(exc) and "energy_ev" in str(exc.value)
    read = read_scans(dp, laminography_angle_deg=LAMINO, energy_ev=ENERGY_EV,
                      distance_m=DISTANCE_M, detector_pixel_m=PIXEL_M,
                      rotation_angle_deg=12.0 - 90.0)[0]
    _assert_same(read, scan)
    dp2 = write_foldslice(tmp_path / "h", scan)
    with pytest.raises(DataError) as exc:
        read_scans(dp2, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M,
                   energy_ev=7000.0)
    assert "supplied" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        read_scans(dp2, laminography_angle_deg=LAMINO)
    assert "detector_pixel_m" in _one_line(exc)


def test_inspect_names_what_is_missing(tmp_path):
    write_foldslice(tmp_path / "S00001", _scan(5.0))
    text = inspect(tmp_path, detector_pixel_m=PIXEL_M)
    assert "format: foldslice-prepared" in text
    assert "frame shape: 16 x 16" in text and "energy: 6200 eV" in text
    assert "rotation angles: 5..5 deg" in text
    assert "not in the files (supply them): laminography_angle_deg" in text


# --------------------------------------------------------------------------- ptychodus


def write_ptychodus(folder: Path, scan: Scan, assembled: bool = False) -> tuple[Path, Path]:
    """ptychodus 1.7.0 files.

    - ``plugins/h5_diffraction_file.py`` ``H5DiffractionFileWriter.write``:
      ``create_dataset('/dp', data=data, compression='lzf')``; or ``api/io.py``
      ``save_diffraction_data`` l.182-209: ``indexes``, ``patterns`` (+ attrs
      ``detector_pixel_width_m``/``height_m``), ``bad_pixels``, all LZF.
    - ``api/io.py`` ``save_product`` l.441-504: root attrs, position datasets, ``probe``,
      ``object`` with ``center_x_m``/``center_y_m``/``pixel_width_m``/``pixel_height_m``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    diffraction = folder / "scan_diffraction.h5"
    order = np.arange(scan.n_positions)[::-1]  # positions listed in another order
    with h5py.File(diffraction, "w") as f:
        if assembled:
            f.create_dataset("indexes", data=np.arange(scan.n_positions) + 100,
                             compression="lzf")
            ds = f.create_dataset("patterns", data=scan.counts, compression="lzf")
            ds.attrs["detector_pixel_width_m"] = PIXEL_M
            ds.attrs["detector_pixel_height_m"] = PIXEL_M
            f.create_dataset("bad_pixels", data=np.zeros((FRAME, FRAME), bool),
                             compression="lzf")
        else:
            f.create_dataset("/dp", data=scan.counts, compression="lzf")
    product = folder / "scan_product.h5"
    write_ptychodus_product(product, scan, "test", order, 100 if assembled else 0)
    return diffraction, product


def test_ptychi_test_data_folders(tmp_path):
    """pty-chi's tests (``tests/test_utils.py``) read ``<name>/ptychodus_dp.hdf5`` with its
    ``ptychodus_para.hdf5`` (a ptychodus product) and ``2d_ptycho/dp_250.hdf5`` with
    ``metadata_250_truePos.hdf5`` and ``metadata_250_nominalPos.hdf5``: the first pair is
    found as such; of two products beside one file neither is guessed."""
    scan = _scan(40.0)
    order = np.arange(scan.n_positions)[::-1]  # write_ptychodus lists them so
    kw = {"laminography_angle_deg": LAMINO, "detector_pixel_m": PIXEL_M}
    for folder, dp, para in (("2d_lsqml", "ptychodus_dp", "ptychodus_para"),
                             ("2d_ptycho", "dp_250", "metadata_250_truePos")):
        diffraction, product = write_ptychodus(tmp_path / folder, scan)
        diffraction.rename(tmp_path / folder / f"{dp}.hdf5")
        product.rename(tmp_path / folder / f"{para}.hdf5")
        read = read_scans(tmp_path / folder, **kw)[0]
        np.testing.assert_array_equal(read.counts, scan.counts[order])
        np.testing.assert_allclose(read.positions_m, scan.positions_m[order], atol=1e-15)
    write_ptychodus_product(tmp_path / "2d_ptycho" / "metadata_250_nominalPos.hdf5", scan,
                            "nominal", order, 0)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "2d_ptycho", **kw)
    assert ("candidates: metadata_250_nominalPos.hdf5, metadata_250_truePos.hdf5"
            in _one_line(exc))


def write_ptychodus_product(path: Path, scan: Scan, name: str, order: np.ndarray,
                            index_offset: int = 0) -> None:
    """A ptychodus 1.7.0 product file of ``scan`` (``api/io.py`` ``save_product``
    l.441-504), its positions listed in ``order`` with indexes ``order + index_offset``."""
    dx = scan.object_pixel_size_m[1]
    frame = scan.frame_shape[0]
    with h5py.File(path, "w") as f:
        f.attrs["name"] = name
        f.attrs["comments"] = ""
        f.attrs["detector_object_distance_m"] = scan.distance_m
        f.attrs["photon_energy_eV"] = scan.energy_ev
        f.attrs["tomography_angle_deg"] = scan.rotation_angle_deg - 90.0
        f.create_dataset("probe_position_indexes", data=order + index_offset)
        f.create_dataset("probe_position_x_m", data=scan.positions_m[order, 0])
        f.create_dataset("probe_position_y_m", data=scan.positions_m[order, 1])
        f.create_dataset("probe", data=np.ones((1, 1, frame, frame), np.complex64))
        obj = f.create_dataset("object", data=np.ones((1, 40, 40), np.complex64))
        obj.attrs["center_x_m"] = 0.0
        obj.attrs["center_y_m"] = 0.0
        obj.attrs["pixel_width_m"] = dx
        obj.attrs["pixel_height_m"] = dx
        f.create_dataset("object_layer_spacing_m", data=np.zeros(0))


@pytest.mark.parametrize("assembled", [False, True])
def test_ptychodus_round_trip(tmp_path, assembled):
    scan = _scan(40.0)
    diffraction, product = write_ptychodus(tmp_path, scan, assembled)
    assert detect_format(diffraction) == "ptychodus-diffraction"
    assert detect_format(product) == "ptychodus-product"
    supplied = {"laminography_angle_deg": LAMINO}
    if not assembled:
        supplied["detector_pixel_m"] = PIXEL_M
    read = read_scans(diffraction, **supplied)[0]
    order = np.arange(scan.n_positions)[::-1]
    np.testing.assert_array_equal(read.counts, scan.counts[order])
    np.testing.assert_allclose(read.positions_m, scan.positions_m[order], atol=1e-15)
    assert read.energy_j == pytest.approx(scan.energy_j, rel=1e-9)
    assert read.distance_m == pytest.approx(DISTANCE_M)
    assert read.x_pixel_size_m == pytest.approx(PIXEL_M, rel=1e-6)
    assert read.rotation_angle_deg == pytest.approx(40.0)
    # A supplied rotation angle wins over ptychodus's (default 0) tomography angle.
    again = read_scans(diffraction, rotation_angle_deg=-30.0, **supplied)[0]
    assert again.rotation_angle_deg == pytest.approx(60.0)


PTYCHODUS_PYTHON = Path(os.environ.get("ADEPT_PTYCHODUS_PYTHON", "/tmp/ptyvenv/bin/python"))

_PTYCHODUS_WRITER = """
import sys, numpy
from pathlib import Path
from ptychodus.api.io import save_product, save_diffraction_data
from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
src = numpy.load(sys.argv[1])
out = Path(sys.argv[2])
counts, pos = src['counts'], src['positions']
px = PixelGeometry(width_m=float(src['pixel']), height_m=float(src['pixel']))
save_diffraction_data(out / 'diffraction.h5', AssembledDiffractionData(
    numpy.arange(len(counts)), counts, px, numpy.zeros(counts.shape[1:], bool)))
dx = float(src['dx'])
meta = ProductMetadata(name='t', comments='', detector_distance_m=float(src['distance']),
    photon_energy_eV=float(src['energy']), probe_photon_count=0.0, exposure_time_s=0.0,
    mass_attenuation_m2_per_kg=0.0, tomography_angle_deg=float(src['angle']))
points = [ProbePosition(i, float(x), float(y)) for i, (x, y) in enumerate(pos[:, :2])]
obj = Object(src['object'], PixelGeometry(width_m=dx, height_m=dx), ObjectCenter(0.0, 0.0))
probe = ProbeSequence(numpy.ones((1, 1, 16, 16), complex), None, PixelGeometry(dx, dx))
save_product(out / 'product.h5', Product(meta, ProbePositionSequence(points), probe, obj, []))
"""


@pytest.mark.skipif(not PTYCHODUS_PYTHON.is_file(),
                    reason="ptychodus 1.7.0 venv absent (python -m venv /tmp/ptyvenv && "
                           "/tmp/ptyvenv/bin/pip install ptychodus==1.7.0)")
def test_files_written_by_ptychodus_itself(tmp_path):
    scan = _scan(25.0)
    phase = _phase_image(40, 40)
    np.savez(tmp_path / "src.npz", counts=scan.counts, positions=scan.positions_m,
             pixel=PIXEL_M, dx=_object_pixel(), distance=DISTANCE_M, energy=ENERGY_EV,
             angle=25.0 - 90.0, object=np.exp(1j * phase)[None])
    (tmp_path / "w.py").write_text(textwrap.dedent(_PTYCHODUS_WRITER))
    subprocess.run([str(PTYCHODUS_PYTHON), str(tmp_path / "w.py"), str(tmp_path / "src.npz"),
                    str(tmp_path)], check=True, timeout=300, capture_output=True)
    read = read_scans(tmp_path / "diffraction.h5", positions_path=tmp_path / "product.h5",
                      laminography_angle_deg=LAMINO)[0]
    _assert_same(read, scan)
    ps = read_projection_set(tmp_path / "product.h5", laminography_angle_deg=LAMINO)
    assert ps.angles_deg == pytest.approx([25.0])
    assert ps.pixel_size_m == pytest.approx(_object_pixel())


# --------------------------------------------------------------------------- CXI


def write_ptychodus_cxi(folder: Path, scan: Scan) -> tuple[Path, Path]:
    """ptychodus 1.7.0 ``plugins/cxi_file.py``: ``CXIDiffractionFileWriter.write``
    l.222-264 (energy J, distance, pixel sizes, ``detector_1/data`` LZF, ``mask`` uint32
    ``CXI_PIXEL_IS_INVALID``, soft link ``data_1/data``, ``ptychodus/tomography_angle_deg``)
    and ``CXIProductFileIO.write`` (``sample_1/geometry_1/translation`` ``[n, 3]``: the probe
    positions as they are; ``process_1/program`` 'Ptychodus'; the ``ptychodus`` extras group,
    written always by ``_write_ptychodus_extras``)."""
    folder.mkdir(parents=True, exist_ok=True)
    diffraction = folder / "diffraction.cxi"
    with h5py.File(diffraction, "w") as f:
        f.create_dataset("cxi_version", data=160)
        f.create_group("/entry_1").create_dataset("start_time", data="2026-01-01T00:00:00")
        source = f.create_group("/entry_1/instrument_1/source_1")
        detector = f.create_group("/entry_1/instrument_1/detector_1")
        source.create_dataset("energy", data=scan.energy_j)
        detector.create_dataset("distance", data=scan.distance_m)
        detector.create_dataset("x_pixel_size", data=PIXEL_M)
        detector.create_dataset("y_pixel_size", data=PIXEL_M)
        detector.create_dataset("data", data=scan.counts, compression="lzf")
        mask = np.zeros((FRAME, FRAME), np.uint32)
        mask[0, 3] = 0x00000001
        detector.create_dataset("mask", data=mask, compression="lzf")
        f.create_group("/entry_1/data_1")["data"] = h5py.SoftLink(
            "/entry_1/instrument_1/detector_1/data")
        f.create_dataset("/entry_1/ptychodus/tomography_angle_deg",
                         data=scan.rotation_angle_deg - 90.0)
    product = folder / "product.cxi"
    with h5py.File(product, "w") as f:
        f.create_dataset("/entry_1/sample_1/geometry_1/translation", data=scan.positions_m)
        f.create_dataset("/entry_1/process_1/program", data="Ptychodus")
        f.create_dataset("/entry_1/ptychodus/probe_position_indexes",
                         data=np.arange(scan.n_positions))
    return diffraction, product


def write_cdtools_cxi(path: Path, scan: Scan) -> None:
    """A CXI file as CDTools writes one (cdtools ``tools/data``: ``create_cxi``
    (``cxi_version`` 160, ``number_of_entries``), ``add_source`` (float32 ``wavelength`` and
    ``energy`` in J), ``add_detector`` (float32 ``distance``, pixel sizes as norms of
    ``basis_vectors``), ``add_mask`` (uint32, 1 = off), ``add_data`` (gzip, soft link
    ``data_1/data``), ``add_ptycho_translations``: the translations negated "to conform to
    the standard in cxi files that the translations refer to the object's translation",
    stored at ``sample_1/geometry_1/translation`` with soft links in ``data_1`` and
    ``detector_1``). CDTools's probe translation ``p`` is in the lab frame of its default
    basis ``[[0, -p, 0], [-p, 0, 0]]`` (both axes against the frame's; ``tools/
    interactions`` ``translations_to_pixel`` puts the probe at ``(-p_y, -p_x) / pixel``),
    so the stored ``T = -p`` is our probe position: ``T = scan.positions_m``."""
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=160)
        f.create_dataset("number_of_entries", data=1)
        source = f.create_group("/entry_1/instrument_1/source_1")
        wavelength = _wavelength()
        source["wavelength"] = np.float32(wavelength)
        source["energy"] = np.float32(1.9864459e-25 / wavelength)
        det = f.create_group("/entry_1/instrument_1/detector_1")
        det["distance"] = np.float32(scan.distance_m)
        basis = np.array([[0.0, -PIXEL_M], [-PIXEL_M, 0.0], [0.0, 0.0]])
        det["x_pixel_size"] = np.linalg.norm(basis[:, 1])
        det["y_pixel_size"] = np.linalg.norm(basis[:, 0])
        det.create_dataset("basis_vectors", data=basis)
        det.create_dataset("mask", data=np.zeros((FRAME, FRAME), np.uint32))
        det.create_dataset("data", data=scan.counts.astype(np.float32), compression="gzip",
                           chunks=True)
        f.create_group("/entry_1/data_1")["data"] = h5py.SoftLink(
            "/entry_1/instrument_1/detector_1/data")
        geometry = f.create_group("/entry_1/sample_1/geometry_1")
        geometry.create_dataset("translation", data=scan.positions_m)  # -p, p = -positions
        f["/entry_1/data_1/translation"] = h5py.SoftLink(
            "/entry_1/sample_1/geometry_1/translation")
        det["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")


def test_foreign_cxi_round_trip(tmp_path):
    scan = _scan(-20.0)
    diffraction, product = write_ptychodus_cxi(tmp_path, scan)
    assert detect_format(diffraction) == "cxi"
    _assert_same(read_scans(diffraction, laminography_angle_deg=LAMINO)[0], scan)  # beside it
    elsewhere = product.rename(tmp_path / "positions.cxi")
    with pytest.raises(DataError) as exc:
        read_scans(diffraction, laminography_angle_deg=LAMINO)
    assert "positions" in _one_line(exc)
    read = read_scans(diffraction, positions_path=elsewhere, laminography_angle_deg=LAMINO)[0]
    _assert_same(read, scan)
    assert read.mask is not None and read.mask[0, 3] and read.mask.sum() == 1


def test_foreign_cxi_mask_flags_and_per_frame_masks(tmp_path):
    """CXI pixel-mask flags (Maia 2012; FXIhub condor ``utils/pixelmask.py`` lists them):
    saturated or missing pixels are left out, informational flags (a hit finder's peak,
    background corrected) are not; a per-frame mask ``[n, ny, nx]`` leaves out a pixel
    flagged in any frame."""
    scan = _scan(-20.0)
    diffraction, _ = write_ptychodus_cxi(tmp_path, scan)
    flags = np.zeros((scan.n_positions, FRAME, FRAME), np.uint16)
    flags[0, 1, 1] = 0x2        # saturated in frame 0 only
    flags[2, 4, 5] = 0x200      # missing in frame 2
    flags[1, 6, 6] = 0x2000     # a hit finder's peak: usable
    flags[3, 7, 8] = 0x4000     # background corrected: usable
    flags[4, 9, 9] = 0x8000     # a writer's own flag, unknown: bad
    for stored in (flags, flags.max(axis=0)):
        with h5py.File(diffraction, "r+") as f:
            del f["/entry_1/instrument_1/detector_1/mask"]
            f["/entry_1/instrument_1/detector_1/mask"] = stored
        mask = read_scans(diffraction, laminography_angle_deg=LAMINO)[0].mask
        assert mask is not None and np.argwhere(mask).tolist() == [[1, 1], [4, 5], [9, 9]]
    with h5py.File(diffraction, "r+") as f:  # a boolean per-frame mask
        del f["/entry_1/instrument_1/detector_1/mask"]
        f["/entry_1/instrument_1/detector_1/mask"] = flags == 0x2
    mask = read_scans(diffraction, laminography_angle_deg=LAMINO)[0].mask
    assert np.argwhere(mask).tolist() == [[1, 1]]
    with h5py.File(diffraction, "r+") as f:  # neither one per frame nor one for all
        del f["/entry_1/instrument_1/detector_1/mask"]
        f["/entry_1/instrument_1/detector_1/mask"] = flags[:2]
    with pytest.raises(DataError) as exc:
        read_scans(diffraction, laminography_angle_deg=LAMINO)
    assert "mask" in _one_line(exc)


def test_cxi_translation_is_the_samples_unless_ptychodus_wrote_it(tmp_path):
    """The CXI spec's translation is the sample's in the lab frame of the detector's basis
    (CDTools: negated probe translations along a basis of negative axes, so the stored value
    is our probe position); ptychodus writes the probe positions: ``auto`` tells them
    apart, and ``data.cxi_translation`` overrides it. Without a basis the probe is at minus
    the translation."""
    scan = _scan(-20.0)
    write_cdtools_cxi(tmp_path / "cdtools.cxi", scan)
    assert detect_format(tmp_path / "cdtools.cxi") == "cxi"
    kw = {"laminography_angle_deg": LAMINO, "rotation_angle_deg": -20.0}
    read = read_scans(tmp_path / "cdtools.cxi", **kw)[0]
    np.testing.assert_allclose(read.positions_m, scan.positions_m, atol=1e-15)
    np.testing.assert_allclose(read.counts, scan.counts, rtol=1e-6)
    assert "probe position = +x +y of the translation" in inspect(tmp_path / "cdtools.cxi",
                                                                  **kw)
    with h5py.File(tmp_path / "cdtools.cxi", "r+") as f:  # a basis along +x, +y
        f["/entry_1/instrument_1/detector_1/basis_vectors"][...] *= -1
    mirrored = read_scans(tmp_path / "cdtools.cxi", **kw)[0]
    np.testing.assert_allclose(mirrored.positions_m, -scan.positions_m, atol=1e-15)
    as_stored = read_scans(tmp_path / "cdtools.cxi", cxi_translation="probe", **kw)[0]
    np.testing.assert_allclose(as_stored.positions_m, scan.positions_m, atol=1e-15)
    with h5py.File(tmp_path / "cdtools.cxi", "r+") as f:  # no basis: the spec's default
        del f["/entry_1/instrument_1/detector_1/basis_vectors"]
    diffraction, _ = write_ptychodus_cxi(tmp_path / "pty", scan)
    as_sample = read_scans(diffraction, laminography_angle_deg=LAMINO,
                           cxi_translation="sample")[0]
    np.testing.assert_allclose(as_sample.positions_m, -scan.positions_m, atol=1e-15)
    # our own layout read as a foreign CXI file (our geometry keys): probe positions
    write_cxi(tmp_path / "ours.cxi", scan)
    ours = read_scans(tmp_path / "ours.cxi", "cxi")[0]
    np.testing.assert_allclose(ours.positions_m, scan.positions_m, atol=1e-15)
    # ptychodus's position indexes put product.cxi's rows in frame order
    order = np.random.default_rng(4).permutation(scan.n_positions)
    with h5py.File(tmp_path / "pty" / "product.cxi", "r+") as f:
        f["/entry_1/sample_1/geometry_1/translation"][...] = scan.positions_m[order]
        f["/entry_1/ptychodus/probe_position_indexes"][...] = order
    shuffled = read_scans(diffraction, laminography_angle_deg=LAMINO)[0]
    np.testing.assert_allclose(shuffled.positions_m, scan.positions_m, atol=1e-15)
    with h5py.File(tmp_path / "pty" / "product.cxi", "r+") as f:
        f["/entry_1/ptychodus/probe_position_indexes"][0] = order[1]
    with pytest.raises(DataError) as exc:
        read_scans(diffraction, laminography_angle_deg=LAMINO)
    assert "permutation" in _one_line(exc)
    with h5py.File(tmp_path / "pty" / "product.cxi", "r+") as f:
        f["/entry_1/ptychodus/probe_position_indexes"][0] = order[0]
    # inspect says which reading it took
    assert "probe position = -translation" in inspect(tmp_path / "cdtools.cxi", **kw)
    np.testing.assert_allclose(read_scans(tmp_path / "cdtools.cxi", **kw)[0].positions_m,
                               -scan.positions_m, atol=1e-15)
    text = inspect(diffraction, laminography_angle_deg=LAMINO)
    assert "CXI translation (product.cxi): probe positions as stored" in text


def test_cxi_detector_basis_across_the_lab_axes_is_one_error(tmp_path):
    """A basis whose columns run along the lab's y (a detector turned by 90 deg) cannot be
    read as the spec's sample translation along the frame: one line naming the way out."""
    scan = _scan(-20.0)
    write_cdtools_cxi(tmp_path / "turned.cxi", scan)
    with h5py.File(tmp_path / "turned.cxi", "r+") as f:
        f["/entry_1/instrument_1/detector_1/basis_vectors"][...] = np.array(
            [[-PIXEL_M, 0.0], [0.0, -PIXEL_M], [0.0, 0.0]])
    kw = {"laminography_angle_deg": LAMINO, "rotation_angle_deg": -20.0}
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "turned.cxi", **kw)
    assert "set data.cxi_translation: probe" in _one_line(exc)
    read = read_scans(tmp_path / "turned.cxi", cxi_translation="probe", **kw)[0]
    np.testing.assert_allclose(read.positions_m, scan.positions_m, atol=1e-15)


@pytest.mark.parametrize("frames", [7, 3])
def test_pynx_cxi_translation_is_three_rows(tmp_path, frames):
    """PyNX ``pynx/ptycho/ptycho.py`` ``save_ptycho_data_cxi``: ``xyz = np.zeros((3,
    x.size)); xyz[0] = x; xyz[1] = y`` stored as the translation (``[3, n]``), the probe
    positions (its ``runner/cxi.py``: ``x, y = translation[0:2]``) with a detector basis of
    negative axes (``basis_vectors[0, 1] = basis_vectors[1, 0] = -pixel_size``), root
    attribute ``creator = 'PyNX'``; three frames make a ``[3, 3]`` table, read as PyNX's."""
    scan = _scan(10.0)
    scan = Scan(**{**scan.__dict__, "counts": scan.counts[:frames],
                   "positions_m": scan.positions_m[:frames], "counts_shape": None})
    path = tmp_path / "pynx.cxi"
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "PyNX"
        f.create_dataset("cxi_version", data=140)
        f["/entry_1/instrument_1/source_1/energy"] = scan.energy_ev * 1.60218e-19
        det = f.create_group("/entry_1/instrument_1/detector_1")
        det["distance"], det["x_pixel_size"] = scan.distance_m, PIXEL_M
        det["y_pixel_size"] = PIXEL_M
        basis = np.zeros((2, 3))
        basis[0, 1] = basis[1, 0] = -PIXEL_M
        det["basis_vectors"] = basis
        det["data"] = scan.counts.astype(np.float32)
        f["/entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        f["/entry_1/data_1/process_1/program"] = "PyNX"
        xyz = np.zeros((3, frames))
        xyz[0], xyz[1] = scan.positions_m[:, 0], scan.positions_m[:, 1]
        f["/entry_1/sample_1/geometry_1/translation"] = xyz
    read = read_scans(path, laminography_angle_deg=LAMINO, rotation_angle_deg=10.0)[0]
    np.testing.assert_allclose(read.positions_m[:, :2], scan.positions_m[:, :2], atol=1e-15)
    np.testing.assert_array_equal(read.counts, scan.counts.astype(np.float32))


def test_our_own_cxi_is_detected(tmp_path):
    write_cxi(tmp_path / "a.cxi", _scan(0.0))
    write_cxi(tmp_path / "b.cxi", _scan(10.0))
    assert detect_format(tmp_path) == "adept-cxi"
    assert [s.rotation_angle_deg for s in read_scans(tmp_path)] == [0.0, 10.0]


# --------------------------------------------------------------------------- projections


def _phase_image(nv: int, nu: int) -> np.ndarray:
    """Smooth phase up to ~9 rad (it wraps), asymmetric."""
    r, c = np.indices((nv, nu), dtype=float)
    return 9.0 * np.exp(-((r - 0.4 * nv) ** 2 + (c - 0.6 * nu) ** 2) / (0.08 * nv * nu))


def _ramped(phase: np.ndarray) -> np.ndarray:
    r, c = np.indices(phase.shape, dtype=float)
    return np.exp(1j * (phase + 0.7 + 0.05 * r - 0.03 * c))


def _complex_compound(data: np.ndarray, names: tuple[str, str]) -> np.ndarray:
    out = np.empty(data.shape, dtype=[(names[0], "<f8"), (names[1], "<f8")])
    out[names[0]], out[names[1]] = data.real, data.imag
    return out


def write_recons_h5(path: Path, obj: np.ndarray, positions_rc: np.ndarray, asize: int) -> None:
    """PtychoShelves ``*_recons.h5``: ``+core/+save/extract4saving.m``
    (``objects.object_0 = permute(p.object{1}, [2 1 3 4])``, ``p.positions`` transposed),
    ``+io/+HDF/write_dataset.m`` (``H5S.create_simple(..., fliplr(dims))``; complex as a
    compound of ``'r'`` and ``'i'``), ``+core/+save/reconstructions_as_h5.m``
    (``/reconstruction/object`` -> ``int_soft:/reconstruction/p/objects/object_0``).
    permute + fliplr = h5py [Ny, Nx] in MATLAB orientation; [1 2] vectors -> h5py (2, 1)."""
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "ptycho_recons"
        f["/reconstruction/p/objects/object_0"] = _complex_compound(obj, ("r", "i"))
        f["/reconstruction/p/probes/probe_0"] = _complex_compound(
            np.ones((asize, asize), complex), ("r", "i"))
        f["/reconstruction/object"] = h5py.SoftLink("/reconstruction/p/objects/object_0")
        f["/reconstruction/probes"] = h5py.SoftLink("/reconstruction/p/probes/probe_0")
        f["/reconstruction/p/dx_spec"] = np.full((2, 1), _object_pixel())
        f["/reconstruction/p/positions"] = positions_rc
        f["/reconstruction/p/asize"] = np.full((2, 1), float(asize))


def test_ptychoshelves_recons_to_projections(tmp_path):
    asize, full = 8, 40
    truth = {}
    for i, angle in enumerate((10.0, -35.0, 80.0)):
        phase = _phase_image(full, full) * (1 + 0.1 * i)
        positions = np.array([[2.0, 3.0], [20.0, 3.0], [2.0, 25.0], [22.0, 27.0]])
        write_recons_h5(tmp_path / f"S{i:05d}_recons.h5", _ramped(phase), positions, asize)
        truth[angle + 90.0] = phase[6:27, 7:32]  # probe centres: positions + asize / 2
    assert detect_format(tmp_path) == "ptychoshelves-recons"
    ps = read_projection_set(tmp_path, laminography_angle_deg=LAMINO,
                             angles_deg=[10.0, -35.0, 80.0])
    assert ps.angles_deg.tolist() == [55.0, 100.0, 170.0]
    assert ps.tilt_deg == LAMINO and ps.pixel_size_m == pytest.approx(_object_pixel())
    assert ps.projections.shape == (3, 21, 25)
    for k, angle in enumerate(ps.angles_deg):
        np.testing.assert_allclose(ps.projections[k], remove_plane(truth[angle]), atol=2e-4)
    assert ps.probes is not None and ps.probes.shape == (3, asize, asize)


def test_ptychoshelves_joint_reconstruction_of_two_scans(tmp_path):
    """``p.share_object = 0`` over two scans: ``+core/+save/reconstructions_as_h5.m`` writes
    the first scan's file whole and, for the second, copies ``/reconstruction/p`` with
    ``utils/hdf5_cp_file.m`` (shallow: ``['ext:' orig_filename ':' group]``, an external
    link relative to the file) and soft-links ``/reconstruction/object`` to
    ``/reconstruction/p/objects/object_1``: the second projection is that object. Any
    other external target stays refused."""
    asize, full = 8, 40
    positions = np.array([[2.0, 3.0], [20.0, 3.0], [2.0, 25.0], [22.0, 27.0]])
    phases = [_phase_image(full, full), _phase_image(full, full)[:, ::-1] * 1.5]
    first = tmp_path / "S00001" / "S00001_recons.h5"
    first.parent.mkdir()
    write_recons_h5(first, _ramped(phases[0]), positions, asize)
    with h5py.File(first, "a") as f:
        f["/reconstruction/p/objects/object_1"] = _complex_compound(_ramped(phases[1]),
                                                                    ("r", "i"))
    second = tmp_path / "S00002" / "S00002_recons.h5"
    second.parent.mkdir()
    with h5py.File(second, "w") as f:
        f["/reconstruction/p"] = h5py.ExternalLink("../S00001/S00001_recons.h5",
                                                   "/reconstruction/p")
        f["/reconstruction/object"] = h5py.SoftLink("/reconstruction/p/objects/object_1")
        f["/reconstruction/probes"] = h5py.SoftLink("/reconstruction/p/probes/probe_0")
    ps = read_projection_set(tmp_path, laminography_angle_deg=LAMINO, angles_deg=[0.0, 30.0])
    assert ps.angles_deg.tolist() == [90.0, 120.0]
    for k, phase in enumerate(phases):
        np.testing.assert_allclose(ps.projections[k], remove_plane(phase[6:27, 7:32]),
                                   atol=2e-4)
    outside = tmp_path.parent / f"{tmp_path.name}_x"
    outside.mkdir()
    write_recons_h5(outside / "other_recons.h5", _ramped(phases[0]), positions, asize)
    with h5py.File(second, "a") as f:
        del f["/reconstruction/p"]
        f["/reconstruction/p"] = h5py.ExternalLink(f"../../{outside.name}/other_recons.h5",
                                                   "/reconstruction/p")
    with pytest.raises(DataError) as exc:
        read_projection_set(second, "ptychoshelves-recons", laminography_angle_deg=LAMINO,
                            angles_deg=[30.0])
    assert "not another *_recons.h5 of this data set" in _one_line(exc)


def write_niter_mat(path: Path, obj: np.ndarray, roi: tuple[range, range],
                    angle: float | None) -> None:
    """fold_slice ``ptycho/+engines/+GPU/ptycho_solver.m``: ``save(...'Niter<N>.mat',
    'outputs','p','probe','object')`` with ``-v7.3``: an HDF5 file behind a 512-byte user
    block starting "MATLAB 7.3 MAT-file"; MATLAB's writer reverses the dimensions
    (h5py reads ``object.T``), stores complex as compound ``(real, imag)``, structs as
    groups and the cell ``p.object_ROI`` as object references into ``/#refs#``."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["object"] = _complex_compound(obj.T, ("real", "imag"))
        f["object"].attrs["MATLAB_class"] = np.bytes_("double")
        f["probe"] = _complex_compound(np.ones((1, 1, 8, 8), complex), ("real", "imag"))
        f["p/dx_spec"] = np.full((2, 1), _object_pixel())
        f["p/lambda"] = np.full((1, 1), _wavelength())
        if angle is not None:
            f["p/angle"] = np.full((1, 1), angle)
        refs = f.create_group("#refs#")
        refs["a"] = np.array([list(roi[0])], dtype=float).T + 1.0  # 1-based, MATLAB 1xN
        refs["b"] = np.array([list(roi[1])], dtype=float).T + 1.0
        cell = f.create_dataset("p/object_ROI", (2, 1), dtype=h5py.ref_dtype)
        cell[0, 0], cell[1, 0] = refs["a"].ref, refs["b"].ref
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_group("outputs")["probe_positions"] = np.zeros((2, 4))
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 2026 "
                 b"HDF5 schema 1.00 .".ljust(116, b" "))


def test_foldslice_niter_to_projections(tmp_path):
    phase = _phase_image(30, 36)
    roi = (range(4, 25), range(6, 33))
    for i, angle in enumerate((-60.0, 0.0)):
        folder = tmp_path / f"scan{i}" / "MLc"
        folder.mkdir(parents=True)
        write_niter_mat(folder / "Niter100.mat", _ramped(phase + i), roi, angle)
        write_niter_mat(folder / "Niter50.mat", _ramped(0 * phase), roi, angle)
    assert detect_format(tmp_path / "scan0" / "MLc" / "Niter100.mat") == "foldslice-niter"
    ps = read_projection_set(tmp_path, "foldslice-niter", laminography_angle_deg=LAMINO,
                             phase_sign=-1.0)
    assert ps.angles_deg.tolist() == [30.0, 90.0]
    want = -remove_plane(phase[4:25, 6:33])
    np.testing.assert_allclose(ps.projections[0], want, atol=2e-4)
    np.testing.assert_allclose(ps.projections[1], want, atol=2e-4)  # + 1 rad is an offset


def test_ptychodus_products_to_projections(tmp_path):
    for angle in (15.0, 45.0):
        write_ptychodus(tmp_path / f"a{angle:g}", _scan(angle))
    files = [tmp_path / "a15" / "scan_product.h5", tmp_path / "a45" / "scan_product.h5"]
    ps = read_projection_set(files, laminography_angle_deg=LAMINO)
    assert ps.angles_deg.tolist() == pytest.approx([15.0, 45.0])
    assert ps.n_angles == 2 and np.abs(ps.projections).max() < 1e-5  # a flat object


def test_tiff_stack_with_angle_file(tmp_path):
    import tifffile

    stack = np.random.default_rng(1).normal(size=(3, 10, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "proj.tif", stack, photometric="minisblack")
    (tmp_path / "angles.txt").write_text("# theta, deg\n30\n-10.5\n\n100  # last\n")
    assert detect_format(tmp_path / "proj.tif") == "tiff-stack"
    ps = read_projection_set(tmp_path / "proj.tif", laminography_angle_deg=LAMINO,
                             angles_path=tmp_path / "angles.txt", pixel_size_m=20e-9)
    assert ps.angles_deg.tolist() == [-10.5, 30.0, 100.0]
    np.testing.assert_array_equal(ps.projections, stack[[1, 0, 2]])
    (tmp_path / "bad.txt").write_text("1\n2\n")
    with pytest.raises(DataError) as exc:
        read_projection_set(tmp_path / "proj.tif", laminography_angle_deg=LAMINO,
                            angles_path=tmp_path / "bad.txt", pixel_size_m=20e-9)
    assert "2 angles for 3" in _one_line(exc)
    assert read_angle_file(tmp_path / "angles.txt").tolist() == [30.0, -10.5, 100.0]
    # a two-column "index angle" table is refused, not read as its index column
    (tmp_path / "two.txt").write_text("0 30.0\n1 -10.5\n2 100.0\n")
    with pytest.raises(DataError) as exc:
        read_angle_file(tmp_path / "two.txt")
    assert "line 1: 2 columns" in _one_line(exc)
    (tmp_path / "commas.txt").write_text("30.0,\n-10.5,\n100.0\n")
    assert read_angle_file(tmp_path / "commas.txt").tolist() == [30.0, -10.5, 100.0]
    # a folder of pages with one corrupt file: the error names that file
    pages = tmp_path / "pages"
    pages.mkdir()
    for k in range(3):
        tifffile.imwrite(pages / f"p{k}.tif", stack[k])
    (pages / "p1.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError) as exc:
        read_projection_set(pages, "tiff-stack", laminography_angle_deg=LAMINO,
                            angles_path=tmp_path / "angles.txt", pixel_size_m=20e-9)
    assert "p1.tif" in _one_line(exc)


def test_object_phase_unwraps_and_removes_plane():
    phase = _phase_image(32, 32)
    got = object_phase(_ramped(phase))
    np.testing.assert_allclose(got, remove_plane(phase), atol=2e-4)


# --------------------------------------------------------------------------- geometry


def _centroid(image: np.ndarray) -> np.ndarray:
    weights = np.clip(image, 0, None)
    rows, cols = np.indices(image.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def test_ptychoshelves_geometry_pinned_by_a_point_phantom():
    """A point projected by our operator at theta = theta_PS + 90, L = lamino_angle lands
    where PtychoShelves' ASTRA vectors (+astra/ASTRA_initialize.m) put it: row p.v,
    column p.u from the detector centre; without the +90 it would not."""
    import torch

    from hpc_adept.lamino import Geometry, project

    n, det = 21, (31, 31)
    offset = np.array([4.0, -3.0, 2.0])  # (x, y, z) voxels from the volume centre
    volume = torch.zeros((n, n, n), dtype=torch.float64)
    volume[int(10 + offset[2]), int(10 + offset[1]), int(10 + offset[0])] = 1.0
    theta_ps = np.array([0.0, 30.0, 75.0, 140.0, 250.0])
    geometry = Geometry(to_adept_angles(theta_ps, "ptychoshelves"),
                        to_adept_laminography(LAMINO, "pyxalign"), (n, n, n), det)
    images = project(volume, geometry).numpy()
    _, col, row = ptychoshelves_vectors(theta_ps, LAMINO)
    centre = (np.array(det) - 1) / 2
    for k in range(len(theta_ps)):
        want = centre + np.array([row[k] @ offset, col[k] @ offset])
        np.testing.assert_allclose(_centroid(images[k]), want, atol=0.35)
    wrong = Geometry(theta_ps, LAMINO, (n, n, n), det).detector_position(offset)
    assert np.abs(wrong - (np.stack([row @ offset, col @ offset], 1))).max() > 2.0


def test_other_conventions():
    assert to_adept_laminography(np.pi / 2, "tike") == pytest.approx(90.0)
    assert to_adept_angles([np.pi / 2], "tike").tolist() == pytest.approx([-90.0])
    assert to_adept_laminography(20.0, "tomocupy") == pytest.approx(70.0)
    with pytest.raises(ValueError):
        to_adept_angles([0.0], "astra")


# --------------------------------------------------------------------------- bad files


def test_bad_foldslice_files(tmp_path):
    scan = _scan(0.0)
    dp = write_foldslice(tmp_path / "a", scan)
    para = dp.with_name(dp.name.replace("_dp", "_para"))
    with h5py.File(para, "a") as f:
        del f["ppY"]
    with pytest.raises(DataError) as exc:
        read_scans(dp, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    assert str(para) in _one_line(exc) and "/ppY: missing" in str(exc.value)
    with h5py.File(para, "a") as f:
        f["ppY"] = np.zeros(3)
    with pytest.raises(DataError) as exc:
        read_scans(dp, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    assert "expected 7 values" in _one_line(exc)
    with h5py.File(para, "a") as f:
        del f["ppY"]
        f["ppY"] = scan.positions_m[:, 1] * 1e6  # micrometres
    with pytest.raises(DataError) as exc:
        read_scans(dp, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    assert "too large for metres" in _one_line(exc)
    nan = scan.counts.copy()
    nan[2, 3, 4] = np.nan
    dp2 = write_foldslice(tmp_path / "b", Scan(**{**scan.__dict__, "counts": nan}))
    with pytest.raises(DataError) as exc:
        read_scans(dp2, laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    assert "/dp: contains NaN" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        read_scans(dp2, laminography_angle_deg=120.0, detector_pixel_m=PIXEL_M)


def test_missing_filter_is_one_line_naming_the_package(tmp_path):
    path, product = write_ptychodus(tmp_path, _scan(0.0))
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("dp", shape=(2, 8, 8), dtype="f4", chunks=(1, 8, 8),
                              compression=32008, compression_opts=(0, 2),
                              allow_unknown_filter=True)
        ds.id.write_direct_chunk((0, 0, 0), b"\0" * 256)
    with pytest.raises(DataError) as exc:
        read_scans(path, laminography_angle_deg=LAMINO, positions_path=product)
    text = _one_line(exc)
    assert "32008" in text and "hdf5plugin" in text


def test_bad_matlab_and_cxi_and_detection(tmp_path):
    old = tmp_path / "Niter10.mat"
    old.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(128, b" ") + b"\0" * 64)
    with pytest.raises(DataError) as exc:
        detect_format(old)
    assert "-v7.3" in _one_line(exc)
    scan = _scan(0.0)
    diffraction, product = write_ptychodus_cxi(tmp_path / "c", scan)
    with h5py.File(diffraction, "a") as f:
        del f["/entry_1/instrument_1/source_1/energy"]
        f["/entry_1/instrument_1/source_1/energy"] = ENERGY_EV  # eV stored as J
    with pytest.raises(DataError) as exc:
        read_scans(diffraction, positions_path=product, laminography_angle_deg=LAMINO)
    assert "energy" in _one_line(exc) and "plausible" in str(exc.value)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError) as exc:
        detect_format(tmp_path / "junk.h5")
    assert "unknown format" in _one_line(exc)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_cxi(mixed / "a.cxi", scan)
    write_recons_h5(mixed / "S1_recons.h5", np.ones((12, 12), complex),
                    np.zeros((1, 2)), 4)
    with pytest.raises(DataError) as exc:
        detect_format(mixed)
    assert "ambiguous" in _one_line(exc) and "ptychoshelves-recons" in str(exc.value)


# --------------------------------------------------------------------------- LamNI / cSAXS


def write_lamni(folder: Path, scan: Scan, layout: str) -> tuple[Path, Path, Path]:
    """Raw Eiger file, Orchestra positions and angle table (ptychodus 1.7.0
    ``plugins/aps31id_lamni``): ``diffraction_file.py`` ``_read_legacy`` (dataset
    ``/entry/data/eiger_4`` with ``Center_x_pixel``, ``Center_y_pixel``,
    ``Detector_distance_m``, ``Photon_energy_kev``, ``Pixel_size``) or
    ``_read_area_detector`` (``/entry/data/data``, ``/entry/instrument/detector/...``,
    ``/entry/instrument/monochromator/energy``; units mm, um, keV); ``position_file.py``
    (title, Orchestra header, rows; x = -Average_x_st_fzp um); ``_scan_table.py``
    (``scan_no golden_angle encoder_angle measurement_id subtomo_no detector_position
    label``)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = scan.n_positions
    frames = np.zeros((n, 40, 50), np.uint32)
    frames[:, 19 - 8:19 + 8, 27 - 8:27 + 8] = scan.counts.astype(np.uint32)
    frames[:, 0, 0] = np.iinfo(np.uint32).max  # a gap pixel outside the crop
    eiger = folder / "run_00123_master.h5"
    with h5py.File(eiger, "w") as f:
        if layout == "legacy":
            ds = f.create_dataset("/entry/data/eiger_4", data=frames)
            ds.attrs.update({"Center_x_pixel": 27, "Center_y_pixel": 19,
                             "Detector_distance_m": DISTANCE_M,
                             "Photon_energy_kev": ENERGY_EV / 1e3, "Pixel_size": PIXEL_M})
        else:
            f.create_dataset("/entry/data/data", data=frames)
            det = "/entry/instrument/detector"
            f[f"{det}/detector_distance"] = [DISTANCE_M * 1e3]
            f[f"{det}/x_pixel_size"] = [PIXEL_M * 1e6]
            f[f"{det}/beam_center_x"] = [27.0]
            f[f"{det}/beam_center_y"] = [19.0]
            f["/entry/instrument/monochromator/energy"] = [ENERGY_EV / 1e3]
    header = ("DataPoint TotalPoints Target_x Average_x_st_fzp Stdev_x_st_fzp Target_y "
              "Average_y_st_fzp Stdev_y_st_fzp Average_cap1 Stdev_cap1 Average_cap2 "
              "Stdev_cap2 Average_cap3 Stdev_cap3 Average_cap4 Stdev_cap4 Average_cap5 "
              "Stdev_cap5")
    rows = [f"{i} {n} 0 {-x * 1e6:.9f} 0 0 {-y * 1e6:.9f} " + " ".join(["0"] * 11)
            for i, (x, y, _) in enumerate(scan.positions_m)]
    positions = folder / "scan_00123.dat"
    positions.write_text("Scan 123, LamNI\n" + header + "\n" + "\n".join(rows) + "\n")
    table = folder / "tomography_scannumbers.txt"
    table.write_text(f"122 0.0 1.0 0 1 0 ic\n123 10.0 {scan.rotation_angle_deg - 90:.6f} "
                     f"1 1 0 ic\n")
    return eiger, positions, table


@pytest.mark.parametrize("layout", ["legacy", "area-detector"])
def test_lamni_eiger_round_trip(tmp_path, layout):
    scan = _scan(70.0)
    eiger, positions, table = write_lamni(tmp_path, scan, layout)
    assert detect_format(eiger) == "lamni-eiger"
    read = read_scans(eiger, positions_path=positions, roi_px=FRAME, angle_table_path=table,
                      laminography_angle_deg=LAMINO)[0]
    np.testing.assert_array_equal(read.counts, scan.counts)
    np.testing.assert_allclose(read.positions_m, scan.positions_m, atol=1e-14)
    assert read.energy_j == pytest.approx(scan.energy_j, rel=1e-9)
    assert read.distance_m == pytest.approx(DISTANCE_M)
    assert read.x_pixel_size_m == pytest.approx(PIXEL_M)
    assert read.rotation_angle_deg == pytest.approx(70.0, abs=1e-5)
    with pytest.raises(DataError) as exc:
        read_scans(eiger, positions_path=positions, roi_px=64, laminography_angle_deg=LAMINO,
                   rotation_angle_deg=0.0)
    assert "leaves the 40 x 50 frame" in _one_line(exc)


def test_lamni_area_detector_y_pixel_size_is_read(tmp_path):
    """``/entry/instrument/detector/y_pixel_size`` (in ``PixelSize_EGU``, default um) is the
    rows' pixel where the file records it (was taken equal to x_pixel_size)."""
    scan = _scan(70.0)
    eiger, positions, table = write_lamni(tmp_path, scan, "area-detector")
    with h5py.File(eiger, "a") as f:
        f["/entry/instrument/detector/y_pixel_size"] = [1.5 * PIXEL_M * 1e6]
    read = read_scans(eiger, positions_path=positions, roi_px=FRAME, angle_table_path=table,
                      laminography_angle_deg=LAMINO, load_counts=False)[0]
    assert read.x_pixel_size_m == pytest.approx(PIXEL_M)
    assert read.y_pixel_size_m == pytest.approx(1.5 * PIXEL_M)


def test_foldslice_scan_folders_with_two_preparations(tmp_path):
    """fold_slice prepares one ``data_roi<roi_label>_dp.hdf5`` per label, and users keep
    several side by side (``0_Ndp64``, ``0_Ndp128``): without ``data.roi_label`` one error
    line lists them; with it, that preparation of every scan is read."""
    from .conftest import adept

    scans = [_scan(a, seed=i) for i, a in enumerate((30.0, -5.0))]
    for i, scan in enumerate(scans):
        write_foldslice(tmp_path / f"S{i:05d}", scan)
        write_foldslice(tmp_path / f"S{i:05d}", _scan(scan.rotation_angle_deg, seed=9),
                        label="0_Ndp32")
    common = {"laminography_angle_deg": LAMINO, "detector_pixel_m": PIXEL_M}
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, **common)
    assert "labels 0_Ndp16, 0_Ndp32): set data.roi_label" in _one_line(exc)
    read = read_scans(tmp_path, roi_label="0_Ndp16", **common)
    assert [r.rotation_angle_deg for r in read] == pytest.approx([-5.0, 30.0])
    np.testing.assert_array_equal(read[1].counts, scans[0].counts)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, roi_label="1_Ndp16", **common)
    assert "no data_roi1_Ndp16_dp.hdf5" in _one_line(exc)
    (tmp_path / "c.yaml").write_text("data: {roi_label: 0_Ndp16, laminography_angle_deg: "
                                     f"{LAMINO}, detector_pixel_m: {PIXEL_M}}}\n")
    result = adept("inspect", str(tmp_path), "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "foldslice-prepared" in result.stdout


def test_converted_dataset_reads_back_as_ours(tmp_path):
    from hpc_adept.io.cxi import list_dataset, read_cxi
    from hpc_adept.io.formats import write_cxi_dataset

    scans = [_scan(a, seed=i) for i, a in enumerate((30.0, -5.0))]
    for i, scan in enumerate(scans):
        write_foldslice(tmp_path / "in" / f"S{i:05d}", scan)
    read = read_scans(tmp_path / "in", laminography_angle_deg=LAMINO, detector_pixel_m=PIXEL_M)
    write_cxi_dataset(read, tmp_path / "out")
    headers = list_dataset(tmp_path / "out")
    assert [h.rotation_angle_deg for h in headers] == pytest.approx([-5.0, 30.0])
    _assert_same(read_cxi(headers[1].path), scans[0])
    with pytest.raises(DataError):
        write_cxi_dataset(read, tmp_path / "out")


def test_inspect_projections(tmp_path):
    write_recons_h5(tmp_path / "S1_recons.h5", _ramped(_phase_image(20, 20)),
                    np.array([[0.0, 0.0], [10.0, 10.0]]), 4)
    with pytest.raises(DataError) as exc:
        inspect(tmp_path)
    assert "angles_deg" in _one_line(exc)
    with h5py.File(tmp_path / "S1_recons.h5", "a") as f:
        f["/reconstruction/p/angle"] = 0.0  # not read: PtychoShelves keeps no angle
    text = inspect(tmp_path / "S1_recons.h5", angles_deg=[10.0])
    assert "projections: 1" in text and "rotation angles: 100..100 deg" in text


def test_adept_inspect_command(tmp_path, capsys):
    """`adept inspect PATH --set ...` prints what was read; a bad path is one line, exit 2."""
    from hpc_adept.cli import main

    folder = tmp_path / "scan"
    write_foldslice(folder, _scan())
    assert main(["inspect", str(folder), "--set", "laminography_angle_deg=61"]) == 0
    out = capsys.readouterr().out
    assert "foldslice-prepared" in out and "61" in out
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "nothing_here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adept: error")
    assert main(["inspect", str(folder), "--set", "no_equals_sign"]) == 2
    capsys.readouterr()
    for bad in ("bogus=1", "pixel_size_m=abc", "positions_path=[1]"):  # checked as data.*
        assert main(["inspect", str(folder), "--set", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "data." in err[0] and "unexpected" not in err[0]


def test_adept_inspect_takes_the_data_section_of_a_config(tmp_path, capsys):
    """`adept inspect PATH -c CONFIG`: the config's data.* values supply what the files
    lack; a --set value (bare or data.-prefixed) wins over the config."""
    import yaml

    from hpc_adept.cli import main

    folder = tmp_path / "scan"
    write_foldslice(folder, _scan(), with_header=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "format": "foldslice-prepared", "energy_ev": ENERGY_EV, "distance_m": DISTANCE_M,
        "detector_pixel_m": PIXEL_M, "laminography_angle_deg": LAMINO,
        "rotation_angles_deg": [120.0], "angle_convention": "adept"}}))
    assert main(["inspect", str(folder), "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "format: foldslice-prepared" in out and "supply" not in out
    assert f"laminography angle: {LAMINO:g} deg" in out
    assert "rotation angles: 120..120 deg" in out
    assert main(["inspect", str(folder), "-c", str(config), "--set",
                 "data.laminography_angle_deg=45"]) == 0
    assert "laminography angle: 45 deg" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"data": {"energy_evv": 1.0}}))
    assert main(["inspect", str(folder), "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.energy_evv" in err[0]


def test_a_missing_value_names_its_config_key(tmp_path):
    write_foldslice(tmp_path / "S0", _scan(), with_header=False)
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path, laminography_angle_deg=LAMINO)
    assert "data.energy_ev" in _one_line(exc)


def test_tiff_pages_of_different_shapes_are_one_error(tmp_path):
    import tifffile

    from hpc_adept.io.formats.projections import read_tiff_stack

    folder = tmp_path / "tiffs"
    folder.mkdir()
    tifffile.imwrite(folder / "p0.tif", np.zeros((8, 8), np.float32))
    tifffile.imwrite(folder / "p1.tif", np.zeros((8, 9), np.float32))
    angles = tmp_path / "angles.txt"
    angles.write_text("0\n90\n")
    with pytest.raises(DataError, match="page shape") as info:
        read_tiff_stack(folder, angles, laminography_angle_deg=61.0, pixel_size_m=1e-8)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- hidden-data variants


def write_ptychodus_batch_folder(folder: Path, scan: Scan) -> None:
    """One scan in ptychodus's batch layout (AdvancedPhotonSource/ptychodus, 2025-11
    snapshot 7ccf581): ``api/io.py`` l.4-10 ``StandardFileLayout`` (``diffraction.h5``,
    ``product-in.h5``), read together by ``model/core.py`` ``_batch_mode_reconstruct``
    l.243-268; ``model/diffraction/dataset.py`` ``export_assembled_patterns`` l.367-379
    (``patterns``, ``indexes``, ``bad_pixels``, all LZF, no pixel-size attributes);
    ``plugins/h5_product_file.py`` ``H5ProductFileIO.write`` l.160-215 (root attributes
    ``probe_energy_eV``, ..., no ``tomography_angle_deg``; positions from Python lists;
    ``object`` with its pixel and centre attributes; ``loss_epochs`` / ``loss_values``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "diffraction.h5", "w") as f:
        f.create_dataset("patterns", data=np.rint(scan.counts).astype(np.uint32),
                         compression="lzf")
        f.create_dataset("indexes", data=np.arange(scan.n_positions), compression="lzf")
        f.create_dataset("bad_pixels", data=np.zeros((FRAME, FRAME), bool), compression="lzf")
    dx = scan.object_pixel_size_m[1]
    with h5py.File(folder / "product-in.h5", "w") as f:
        for key, value in (("name", "scan"), ("comments", ""),
                           ("detector_object_distance_m", scan.distance_m),
                           ("probe_energy_eV", scan.energy_ev), ("probe_photon_count", 0.0),
                           ("exposure_time_s", 0.0), ("mass_attenuation_m2_kg", 0.0)):
            f.attrs[key] = value
        f.create_dataset("probe_position_indexes", data=list(range(scan.n_positions)))
        f.create_dataset("probe_position_x_m", data=[float(v) for v in scan.positions_m[:, 0]])
        f.create_dataset("probe_position_y_m", data=[float(v) for v in scan.positions_m[:, 1]])
        probe = f.create_dataset("probe", data=np.ones((1, 1, FRAME, FRAME), np.complex64))
        obj = f.create_dataset("object", data=np.ones((1, 40, 40), np.complex64))
        for ds in (probe, obj):
            ds.attrs["pixel_width_m"] = dx
            ds.attrs["pixel_height_m"] = dx
        obj.attrs["center_x_m"] = 0.0
        obj.attrs["center_y_m"] = 0.0
        f.create_dataset("object_layer_spacing_m", data=np.zeros(0))
        f.create_dataset("loss_epochs", data=[])
        f.create_dataset("loss_values", data=[])


def test_ptychodus_batch_layout_one_folder_per_scan(tmp_path):
    """``diffraction.h5`` + ``product-in.h5`` per scan folder: detected from the base folder
    (the products are the positions, not projections), paired, and read in full."""
    scans = {angle: _scan(angle, seed=i) for i, angle in enumerate((20.0, -40.0))}
    for i, scan in enumerate(scans.values()):
        write_ptychodus_batch_folder(tmp_path / f"scan_{i:03d}", scan)
    assert detect_format(tmp_path) == "ptychodus-diffraction"
    # the writer records no rotation angle: supplied, in the files' order
    read = read_scans(tmp_path, laminography_angle_deg=LAMINO, angle_convention="adept",
                      rotation_angles_deg=list(scans))
    assert [s.rotation_angle_deg for s in read] == [-40.0, 20.0]
    for got in read:
        want = scans[got.rotation_angle_deg]
        np.testing.assert_array_equal(got.counts, np.rint(want.counts))
        np.testing.assert_allclose(got.positions_m, want.positions_m, atol=1e-15)
        assert got.x_pixel_size_m == pytest.approx(PIXEL_M, rel=1e-9)  # from the object pixel
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "scan_000" / "diffraction.h5", laminography_angle_deg=LAMINO)
    assert "rotation_angle" in _one_line(exc)
    (tmp_path / "scan_001" / "product-in.h5").unlink()
    with pytest.raises(DataError) as exc:
        read_scans(tmp_path / "scan_001" / "diffraction.h5", laminography_angle_deg=LAMINO,
                   rotation_angle_deg=0.0)
    assert "positions_path" in _one_line(exc)


def test_ptychodus_batch_results_as_projections(tmp_path):
    """Per-scan batch folders imported as projections: each folder's ``product-out.h5``
    (the reconstruction), not its ``product-in.h5`` (the start), in folder order."""
    import shutil

    for i, angle in enumerate((20.0, -40.0)):
        folder = tmp_path / f"scan_{i:03d}"
        write_ptychodus_batch_folder(folder, _scan(angle, seed=i))
        shutil.copy(folder / "product-in.h5", folder / "product-out.h5")
        with h5py.File(folder / "product-out.h5", "r+") as f:
            phase = np.zeros((40, 40))
            phase[10:20, 12 + 5 * i:22 + 5 * i] = 0.3
            f["object"][...] = np.exp(1j * phase)[None].astype(np.complex64)
    ps = read_projection_set(tmp_path, "ptychodus-product", laminography_angle_deg=LAMINO,
                             angles_deg=[20.0, -40.0], angle_convention="adept")
    assert ps.n_angles == 2
    # the results' phase step (the start's objects are flat: no phase at all)
    assert min(np.ptp(ps.projections[0]), np.ptp(ps.projections[1])) > 0.25
    # a scan whose reconstruction did not finish (no product-out.h5) is not imported
    (tmp_path / "scan_001" / "product-out.h5").unlink()
    from hpc_adept.io.formats.detect import _projection_files

    files = [p.parent.name for p in _projection_files(tmp_path, "ptychodus-product")]
    assert files == ["scan_000"]


def test_ptychodus_cxi_pairs_one_folder_per_scan(tmp_path):
    """ptychodus's split CXI files per scan folder (``plugins/cxi_file.py``,
    ``CXIDiffractionFileWriter.write`` / ``CXIProductFileIO.write``: the frames in
    ``diffraction.cxi``, the translations in ``product.cxi``, which holds no frames)."""
    scans = [_scan(angle, seed=i) for i, angle in enumerate((10.0, 70.0))]
    for i, scan in enumerate(scans):
        write_ptychodus_cxi(tmp_path / f"angle_{i}", scan)
    assert detect_format(tmp_path) == "cxi"
    read = read_scans(tmp_path, laminography_angle_deg=LAMINO)
    for got, want in zip(read, scans, strict=True):
        _assert_same(got, want)


def test_matlab_empty_angle_and_deep_result_folders(tmp_path):
    """fold_slice's results lie at ``<base>/<scan>/roi<label>/<prefix>/<engine>/Niter<N>.mat``
    (``ptycho/ptycho_recon.m`` l.575-580): detected from the base folder. A MATLAB ``[]``
    (-v7.3: uint64 dimensions with ``MATLAB_empty`` = 1) is no value: the angle is then
    supplied, and a plain non-scalar angle stays an error."""
    phase = _phase_image(30, 36)
    roi = (range(4, 25), range(6, 33))
    for i in range(2):
        folder = tmp_path / f"S{i:05d}" / "roi0_Ndp16" / "MLs_L1_p1_g32"
        folder.mkdir(parents=True)
        path = folder / "Niter200.mat"
        write_niter_mat(path, _ramped(phase), roi, None)
        with h5py.File(path, "r+") as f:
            f["p/angle"] = np.array([0, 0], np.uint64)
            f["p/angle"].attrs["MATLAB_class"] = np.bytes_("double")
            f["p/angle"].attrs["MATLAB_empty"] = np.uint8(1)
    assert detect_format(tmp_path) == "foldslice-niter"
    ps = read_projection_set(tmp_path, laminography_angle_deg=LAMINO, angles_deg=[0.0, 40.0])
    assert ps.angles_deg.tolist() == [90.0, 130.0]
    with pytest.raises(DataError) as exc:
        read_projection_set(tmp_path, laminography_angle_deg=LAMINO)
    assert "no rotation angle" in _one_line(exc)
    with h5py.File(path, "r+") as f:
        del f["p/angle"].attrs["MATLAB_empty"]
    with pytest.raises(DataError) as exc:
        read_projection_set(tmp_path, laminography_angle_deg=LAMINO, angles_deg=[0.0, 40.0])
    assert "/p/angle" in _one_line(exc)


def test_angle_files_and_tiff_folders_as_common_tools_write_them(tmp_path):
    """A UTF-8 byte-order mark (Excel "CSV UTF-8", Notepad), a MATLAB row vector
    (``writematrix(theta)``: all angles on one line, as many as the projections), a header
    line without ``#`` (one clear line); a folder of ``.TIF`` files each written as
    ``tifffile.imwrite(name, stack[k:k + 1])`` (shape [1, nv, nu] recorded)."""
    import tifffile

    from hpc_adept.io.formats.projections import read_tiff_stack

    (tmp_path / "bom.txt").write_bytes("\ufeff0\n60\n120\n".encode("utf-8"))
    assert read_angle_file(tmp_path / "bom.txt").tolist() == [0.0, 60.0, 120.0]
    (tmp_path / "row.csv").write_text("0,60,120\n")
    assert read_angle_file(tmp_path / "row.csv", expected=3).tolist() == [0.0, 60.0, 120.0]
    with pytest.raises(DataError) as exc:  # one row of another count: a table, refused
        read_angle_file(tmp_path / "row.csv", expected=2)
    assert "line 1: 3 columns" in _one_line(exc)
    (tmp_path / "header.csv").write_text("theta\n0\n60\n120\n")
    with pytest.raises(DataError) as exc:
        read_angle_file(tmp_path / "header.csv")
    assert "'theta' is not a number (a header line must start with #)" in _one_line(exc)
    folder = tmp_path / "pages"
    folder.mkdir()
    stack = np.arange(3 * 6 * 7, dtype=np.float32).reshape(3, 6, 7)
    for k in range(3):
        tifffile.imwrite(folder / f"PROJ_{k:04d}.TIF", stack[k:k + 1])
    ps = read_tiff_stack(folder, tmp_path / "bom.txt", laminography_angle_deg=LAMINO,
                         pixel_size_m=1e-8)
    np.testing.assert_array_equal(ps.projections, stack)


def test_tiff_pages_appended_one_at_a_time_and_unpadded_names(tmp_path):
    """``tifffile.imwrite(path, page, append=True)`` per angle makes one series per page;
    a folder ``proj_0.tif`` .. ``proj_10.tif`` is in page order by number, not by name."""
    import tifffile

    from hpc_adept.io.formats.projections import read_tiff_stack

    pages = [np.full((6, 7), float(k), np.float32) for k in range(11)]
    angles = tmp_path / "angles.txt"
    angles.write_text("".join(f"{10.0 * k}\n" for k in range(11)))
    stack = tmp_path / "stack.tif"
    for page in pages:
        tifffile.imwrite(stack, page, append=True)
    folder = tmp_path / "pages"
    folder.mkdir()
    for k, page in enumerate(pages):
        tifffile.imwrite(folder / f"proj_{k}.tif", page)
    for path in (stack, folder):
        ps = read_tiff_stack(path, angles, laminography_angle_deg=LAMINO, pixel_size_m=1e-8)
        assert [float(p[0, 0]) for p in ps.projections] == [float(k) for k in range(11)]
        assert ps.angles_deg.tolist() == [10.0 * k for k in range(11)]
    tifffile.imwrite(stack, np.zeros((6, 8), np.float32), append=True)  # another shape
    with pytest.raises(DataError) as exc:
        read_tiff_stack(stack, angles, laminography_angle_deg=LAMINO, pixel_size_m=1e-8)
    assert "series of different shapes" in _one_line(exc)
