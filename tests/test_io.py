"""Tests of hpc_adept.io: round trips, reproducible bytes, atomicity, and bad inputs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_adept.errors import DataError
from hpc_adept.io import (
    CircuitTruth,
    ProjectionSet,
    Scan,
    atomic_output,
    cxi,
    list_dataset,
    read_cxi,
    read_ground_truth,
    read_projections,
    read_volume,
    write_cxi,
    write_ground_truth,
    write_h5_atomic,
    write_json_atomic,
    write_projections,
    write_text_atomic,
    write_volume,
)

EV = 1.602176634e-19


def make_scan(
    n: int = 5,
    shape: tuple[int, int] = (16, 16),
    angle: float = 0.0,
    lamino: float = 61.0,
    energy_ev: float = 6200.0,
    probe: bool = True,
    mask: bool = True,
    seed: int = 0,
) -> Scan:
    """A small valid scan with Poisson counts."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    probe_arr = None
    if probe:
        probe_arr = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    mask_arr = None
    if mask:
        mask_arr = np.zeros(shape, dtype=bool)
        mask_arr[0, :3] = True
    return Scan(
        counts=rng.poisson(3.0, size=(n, ny, nx)).astype(np.float32),
        positions_m=rng.normal(scale=1e-6, size=(n, 3)),
        energy_j=energy_ev * EV,
        distance_m=5.23,
        x_pixel_size_m=75e-6,
        y_pixel_size_m=70e-6,
        rotation_angle_deg=angle,
        laminography_angle_deg=lamino,
        probe=probe_arr,
        mask=mask_arr,
    )


def make_projection_set(n: int = 6, probes: bool = True, shifts: bool = False) -> ProjectionSet:
    """A small valid projection set."""
    rng = np.random.default_rng(1)
    extra = {"fourier_error": rng.random(n)}
    if shifts:
        extra["shifts_px"] = rng.normal(size=(n, 2))
    return ProjectionSet(
        projections=rng.normal(size=(n, 8, 10)).astype(np.float32),
        angles_deg=np.linspace(0.0, 360.0, n, endpoint=False),
        tilt_deg=61.0,
        pixel_size_m=27.2e-9,
        probes=rng.normal(size=(n, 4, 4)) + 1j if probes else None,
        extra=extra,
    )


def assert_scans_equal(a: Scan, b: Scan) -> None:
    """All fields of two scans agree (``path`` excepted)."""
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.positions_m, b.positions_m)
    for name in (
        "energy_j",
        "distance_m",
        "x_pixel_size_m",
        "y_pixel_size_m",
        "rotation_angle_deg",
        "laminography_angle_deg",
    ):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("probe", "mask"):
        if getattr(a, name) is None:
            assert getattr(b, name) is None
        else:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def assert_one_line_error(message: str, name: str) -> None:
    """The DataError message names ``name`` and fits on one line."""
    assert name in message, message
    assert "\n" not in message, message


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("with_optional", [True, False])
def test_cxi_round_trip(tmp_path: Path, with_optional: bool) -> None:
    scan = make_scan(probe=with_optional, mask=with_optional)
    path = tmp_path / "scan.cxi"
    write_cxi(path, scan)
    back = read_cxi(path)
    assert_scans_equal(scan, back)
    assert back.path == str(path)
    assert back.counts.dtype == np.float32
    assert back.positions_m.dtype == np.float64
    if with_optional:
        assert back.probe.dtype == np.complex64
        assert back.mask.dtype == np.bool_
    with h5py.File(path, "r") as f:
        assert int(f["/cxi_version"][()]) == 160
        # The detector location is a link to the same counts.
        np.testing.assert_array_equal(f[cxi.DETECTOR_DATA][()], scan.counts)


def test_cxi_reads_detector_data_location(tmp_path: Path) -> None:
    scan = make_scan()
    datasets = cxi._scan_datasets(scan)
    datasets[cxi.DETECTOR_DATA] = datasets.pop(cxi.DATA)
    path = tmp_path / "detector_only.cxi"
    write_h5_atomic(path, datasets)
    assert_scans_equal(scan, read_cxi(path))


def test_cxi_header_only_does_not_read_counts(tmp_path: Path) -> None:
    path = tmp_path / "scan.cxi"
    write_cxi(path, make_scan(n=7, shape=(12, 10)))
    with h5py.File(path, "a") as f:
        # NaN counts would fail a full read: a header read that passes never read them.
        f[cxi.DATA][0, 0, 0] = np.nan
    header = read_cxi(path, load_counts=False)
    assert header.counts is None
    assert header.n_positions == 7
    assert header.frame_shape == (12, 10)
    assert header.positions_m.shape == (7, 3)
    with pytest.raises(DataError):
        read_cxi(path)


def test_scan_derived_quantities() -> None:
    scan = make_scan(shape=(16, 20), energy_ev=6200.0)
    assert scan.energy_ev == pytest.approx(6200.0)
    assert scan.wavelength_m == pytest.approx(1.239841984e-6 / 6200.0, rel=1e-9)
    dy, dx = scan.object_pixel_size_m
    assert dy == pytest.approx(scan.wavelength_m * 5.23 / (16 * 70e-6))
    assert dx == pytest.approx(scan.wavelength_m * 5.23 / (20 * 75e-6))
    assert scan.n_positions == 5
    assert scan.frame_shape == (16, 20)


def test_list_dataset_orders_by_angle(tmp_path: Path) -> None:
    angles = [90.0, 0.0, 270.0, 180.0]
    for i, angle in enumerate(angles):
        # Names in the opposite order of angles: ordering must follow the angle.
        write_cxi(tmp_path / f"scan_{i}.cxi", make_scan(angle=angle, seed=i))
    (tmp_path / "notes.txt").write_text("not a scan")
    scans = list_dataset(tmp_path)
    assert [s.rotation_angle_deg for s in scans] == sorted(angles)
    assert all(s.counts is None for s in scans)
    assert Path(scans[0].path).name == "scan_1.cxi"


def test_projections_round_trip(tmp_path: Path) -> None:
    for ps, name in (
        (make_projection_set(), "projections.h5"),
        (make_projection_set(probes=False, shifts=True), "aligned.h5"),
    ):
        write_projections(tmp_path / name, ps)
        back = read_projections(tmp_path / name)
        np.testing.assert_array_equal(back.projections, ps.projections)
        np.testing.assert_array_equal(back.angles_deg, ps.angles_deg)
        assert (back.tilt_deg, back.pixel_size_m) == (ps.tilt_deg, ps.pixel_size_m)
        assert back.projections.dtype == np.float32
        if ps.probes is None:
            assert back.probes is None
        else:
            assert back.probes.dtype == np.complex64
            np.testing.assert_array_equal(back.probes, ps.probes)
        assert sorted(back.extra) == sorted(ps.extra)
        for key, value in ps.extra.items():
            np.testing.assert_array_equal(back.extra[key], value)
    assert read_projections(tmp_path / "aligned.h5").shifts_px.shape == (6, 2)


def test_volume_and_ground_truth_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(4, 5, 6)).astype(np.float32)
    occupancy = (volume > 0).astype(np.uint8)
    write_volume(tmp_path / "v.h5", volume, 27.2e-9, attrs={"method": "fbp", "iterations": 3})
    back, attrs = read_volume(tmp_path / "v.h5")
    np.testing.assert_array_equal(back, volume)
    assert attrs == {"method": "fbp", "iterations": 3, "voxel_size_m": 27.2e-9}

    write_ground_truth(tmp_path / "gt.h5", volume, occupancy.astype(bool), 27.2e-9)
    gt = read_ground_truth(tmp_path / "gt.h5")
    np.testing.assert_array_equal(gt.volume, volume)
    np.testing.assert_array_equal(gt.occupancy, occupancy)
    assert gt.occupancy.dtype == np.uint8
    assert gt.voxel_size_m == 27.2e-9
    # A dense reconstruction may serve as the reference without an occupancy.
    assert read_ground_truth(tmp_path / "v.h5", require_occupancy=False).occupancy is None


def test_ground_truth_round_trip_with_circuit_labels(tmp_path: Path) -> None:
    circuit = _circuit()
    _circuit_file(tmp_path / "gt.h5")
    back = read_ground_truth(tmp_path / "gt.h5").circuit
    assert back is not None
    np.testing.assert_array_equal(back.nets, circuit.nets)
    np.testing.assert_array_equal(back.vias, circuit.vias)
    assert back.nets.dtype == back.vias.dtype == np.int32
    assert dict(back.layers) == dict(circuit.layers)
    assert back.cut_layers == ("via1",)
    assert back.metal_layers() == {"metal1": (0, 1), "metal2": (2, 3)}
    assert back.cut_layer_slices() == {"via1": (1, 2)}
    assert back.net_names == ("VDD", "net_ä")
    assert back.via_layers == ("via1",)
    assert back.via_ids("via1").tolist() == [1]
    # Without labels the ground truth has none.
    _volume_file(tmp_path / "plain.h5")
    assert read_ground_truth(tmp_path / "plain.h5").circuit is None
    # Labels that do not fit the volume are refused on write.
    bad = CircuitTruth(circuit.nets[:2], circuit.vias, circuit.layers)
    with pytest.raises(ValueError, match="circuit: nets: shape"):
        write_ground_truth(tmp_path / "bad.h5", np.ones((3, 4, 5)),
                           np.ones((3, 4, 5), np.uint8), 1e-8, circuit=bad)
    # An id far beyond the volume (tables indexed by id would take any memory) is refused.
    huge = circuit.nets.copy()
    huge[0, 0, 0] = 2**31 - 1
    with pytest.raises(ValueError, match="exceeds the number of voxels"):
        write_ground_truth(tmp_path / "bad.h5", np.ones((3, 4, 5)),
                           np.ones((3, 4, 5), np.uint8), 1e-8,
                           circuit=CircuitTruth(huge, circuit.vias, circuit.layers))


def test_write_h5_atomic_nested_groups_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "n.h5"
    write_h5_atomic(
        path,
        {"/a/b/c": np.arange(3), "top": np.float64(2.5)},
        attrs={"name": "x", "vec": [1.0, 2.0]},
        dataset_attrs={"/a/b/c": {"units": "m"}},
    )
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["a/b/c"][()], np.arange(3))
        assert f["a/b/c"].attrs["units"] == "m"
        assert f["top"][()] == 2.5
        assert f.attrs["name"] == "x"


def test_json_and_text_round_trip(tmp_path: Path) -> None:
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(4), "d": tmp_path}
    write_json_atomic(tmp_path / "t.json", obj)
    assert json.loads((tmp_path / "t.json").read_text()) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": 4,
        "d": str(tmp_path),
    }
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"


# --------------------------------------------------------------------------- reproducibility


def _write_everything(directory: Path) -> None:
    """One file of each kind; the scan is large enough to take the gzip path."""
    rng = np.random.default_rng(3)
    write_cxi(directory / "scan.cxi", make_scan(n=70, shape=(64, 64)))
    write_projections(directory / "aligned.h5", make_projection_set(shifts=True))
    volume = rng.normal(size=(8, 8, 8)).astype(np.float32)
    write_volume(directory / "volume.h5", volume, 1e-8, attrs={"method": "dip"})
    write_ground_truth(directory / "gt.h5", volume, volume > 0, 1e-8)


def test_rewrites_are_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    _write_everything(first)
    # Why sleep: a stored modification time (one-second resolution) would now differ.
    time.sleep(1.1)
    _write_everything(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    with h5py.File(first / "scan.cxi", "r") as f:
        assert f[cxi.DATA].compression == "gzip"


# --------------------------------------------------------------------------- atomicity


def test_atomic_output_temporary_name(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name == f".out.bin.{os.getpid()}.tmp"
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_exception_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "volume.h5"
    volume = np.ones((2, 3, 4), dtype=np.float32)
    write_volume(target, volume, 1e-8)
    before = target.read_bytes()
    # An unstorable attribute fails after the datasets were written to the temporary.
    with pytest.raises(TypeError):
        write_volume(target, 2 * volume, 1e-8, attrs={"bad": object()})
    with pytest.raises(ValueError):
        nan_counts = np.full((5, 16, 16), np.nan, dtype=np.float32)
        write_cxi(
            tmp_path / "scan.cxi", Scan(**{**_scan_fields(make_scan()), "counts": nan_counts})
        )
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.h5"]


# --------------------------------------------------------------------------- bad CXI files


def _replace(key: str, value: np.ndarray | float) -> Callable[[Path], None]:
    """Mutation: replace dataset ``key`` with ``value``."""

    def mutate(path: Path) -> None:
        with h5py.File(path, "a") as f:
            del f[key]
            f[key] = value

    return mutate


def _delete(*keys: str) -> Callable[[Path], None]:
    """Mutation: delete datasets/links ``keys``."""

    def mutate(path: Path) -> None:
        with h5py.File(path, "a") as f:
            for key in keys:
                del f[key]

    return mutate


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_counts(path: Path) -> None:
    with h5py.File(path, "a") as f:
        f[cxi.DATA][1, 2, 3] = np.nan


def _negative_counts(path: Path) -> None:
    with h5py.File(path, "a") as f:
        f[cxi.DATA][0, 0, 0] = -1.0


def _remove(path: Path) -> None:
    path.unlink()


N_FRAMES, FRAME = 5, (16, 16)

BAD_CXI = {
    "missing file": (_remove, "not found"),
    "not HDF5": (_random_bytes, "HDF5"),
    "truncated HDF5": (_truncate, "HDF5"),
    "missing data": (_delete(cxi.DETECTOR_DATA, cxi.DATA), "no diffraction data"),
    "missing energy": (_delete(cxi.ENERGY), "energy: missing"),
    "negative distance": (_replace(cxi.DISTANCE, -5.23), "distance: must be positive"),
    "zero pixel size": (_replace(cxi.X_PIXEL, 0.0), "x_pixel_size: must be positive"),
    "NaN counts": (_nan_counts, "NaN"),
    "negative counts": (_negative_counts, "negative"),
    "all-zero counts": (_replace(cxi.DATA, np.zeros((N_FRAMES, *FRAME))), "zero"),
    "positions count": (_replace(cxi.TRANSLATION, np.zeros((N_FRAMES + 1, 3))), "6 positions"),
    "positions shape": (_replace(cxi.TRANSLATION, np.zeros((N_FRAMES, 2))), "translation"),
    "2-D counts": (_replace(cxi.DATA, np.ones(FRAME)), "expected 3-D"),
    "string counts": (_replace(cxi.DATA, np.array([b"abc"])), "not real numeric"),
    "probe shape": (_replace(cxi.PROBE, np.ones((8, 8), np.complex64)), "probe"),
    "real probe": (_replace(cxi.PROBE, np.ones(FRAME)), "not complex"),
    "mask shape": (_replace(cxi.MASK, np.zeros((4, 4), np.uint8)), "mask"),
    "energy array": (_replace(cxi.ENERGY, np.ones(3)), "scalar"),
    "NaN rotation angle": (_replace(cxi.ROTATION, np.nan), "rotation_angle_deg: not finite"),
    "missing laminography angle": (_delete(cxi.LAMINOGRAPHY), "laminography_angle_deg"),
}


@pytest.mark.parametrize("case", sorted(BAD_CXI))
def test_bad_cxi_raises_data_error(tmp_path: Path, case: str) -> None:
    mutate, expected = BAD_CXI[case]
    path = tmp_path / "bad_scan.cxi"
    write_cxi(path, make_scan(n=N_FRAMES, shape=FRAME))
    mutate(path)
    with pytest.raises(DataError) as excinfo:
        read_cxi(path)
    assert_one_line_error(str(excinfo.value), "bad_scan.cxi")
    assert expected in str(excinfo.value)


# --------------------------------------------------------------------------- bad datasets


def _write_scans(directory: Path, scans: list[Scan]) -> None:
    for i, scan in enumerate(scans):
        write_cxi(directory / f"s{i}.cxi", scan)


BAD_DATASETS = {
    "duplicate rotation angles": (
        [make_scan(angle=10.0), make_scan(angle=10.0 + 1e-8), make_scan(angle=20.0)],
        "same rotation angle",
    ),
    "inconsistent laminography": (
        [make_scan(angle=0.0), make_scan(angle=1.0, lamino=60.0)],
        "laminography angle",
    ),
    "inconsistent energy": (
        [make_scan(angle=0.0), make_scan(angle=1.0, energy_ev=7000.0)],
        "energy",
    ),
    "inconsistent frame shape": (
        [make_scan(angle=0.0), make_scan(angle=1.0, shape=(8, 8))],
        "frame shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_raises_data_error(tmp_path: Path, case: str) -> None:
    scans, expected = BAD_DATASETS[case]
    directory = tmp_path / "my_dataset"
    directory.mkdir()
    _write_scans(directory, scans)
    with pytest.raises(DataError) as excinfo:
        list_dataset(directory)
    assert_one_line_error(str(excinfo.value), "my_dataset")
    assert expected in str(excinfo.value)


def test_empty_or_missing_dataset_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    (empty / "readme.txt").write_text("no scans here")
    with pytest.raises(DataError) as excinfo:
        list_dataset(empty)
    assert_one_line_error(str(excinfo.value), "empty_dataset")
    with pytest.raises(DataError) as excinfo:
        list_dataset(tmp_path / "nowhere")
    assert_one_line_error(str(excinfo.value), "nowhere")


def test_dataset_with_a_bad_file_names_that_file(tmp_path: Path) -> None:
    _write_scans(tmp_path, [make_scan(angle=0.0), make_scan(angle=5.0)])
    _truncate(tmp_path / "s1.cxi")
    with pytest.raises(DataError) as excinfo:
        list_dataset(tmp_path)
    assert_one_line_error(str(excinfo.value), "s1.cxi")


# --------------------------------------------------------------------------- bad run files


def _projection_file(path: Path) -> None:
    write_projections(path, make_projection_set(shifts=True))


def _volume_file(path: Path) -> None:
    write_ground_truth(path, np.ones((3, 4, 5)), np.ones((3, 4, 5), np.uint8), 1e-8)


def _circuit() -> CircuitTruth:
    """Two nets and one via in a (3, 4, 5) volume: metal1 slice 0, via1 slice 1, metal2
    slice 2."""
    nets = np.zeros((3, 4, 5), np.int32)
    vias = np.zeros((3, 4, 5), np.int32)
    nets[0, 1, :] = 1
    nets[2, :, 2] = 1
    nets[1, 1, 2] = 1
    vias[1, 1, 2] = 1
    nets[0, 3, :] = 2
    return CircuitTruth(nets, vias, {"metal1": (0, 1), "via1": (1, 2), "metal2": (2, 3)},
                        cut_layers=("via1",), net_names=("VDD", "net_ä"),
                        via_layers=("via1",))


def _circuit_file(path: Path) -> None:
    write_ground_truth(path, np.ones((3, 4, 5)), np.ones((3, 4, 5), np.uint8), 1e-8,
                       circuit=_circuit())


def _delete_attr(name: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        with h5py.File(path, "a") as f:
            del f.attrs[name]

    return mutate


def _nan_volume(path: Path) -> None:
    with h5py.File(path, "a") as f:
        f["volume"][0, 0, 0] = np.nan


BAD_RUNFILES = {
    "angles length": (_projection_file, _replace("angles_deg", np.zeros(5)), "5 angles for 6"),
    "NaN projections": (
        _projection_file,
        _replace("projections", np.full((6, 2, 2), np.nan)),
        "NaN",
    ),
    "2-D projections": (_projection_file, _replace("projections", np.ones((6, 2))), "3-D"),
    "shifts shape": (_projection_file, _replace("shifts_px", np.zeros((6, 3))), "shifts_px"),
    "probes length": (
        _projection_file,
        _replace("probes", np.ones((2, 4, 4), np.complex64)),
        "probes",
    ),
    "missing pixel size": (_projection_file, _delete_attr("pixel_size_m"), "pixel_size_m"),
    "NaN volume": (_volume_file, _nan_volume, "volume: contains NaN"),
    "missing voxel size": (_volume_file, _delete_attr("voxel_size_m"), "voxel_size_m"),
    "occupancy shape": (
        _volume_file,
        _replace("occupancy", np.ones((3, 4), np.uint8)),
        "occupancy",
    ),
    "occupancy values": (
        _volume_file,
        _replace("occupancy", np.full((3, 4, 5), 7, np.uint8)),
        "0 or 1",
    ),
    "missing occupancy": (_volume_file, _delete("occupancy"), "occupancy: missing"),
    "circuit nets shape": (_circuit_file, _replace("circuit/nets", np.ones((3, 4), np.int32)),
                           "circuit/nets"),
    "circuit vias float": (_circuit_file,
                           _replace("circuit/vias", np.zeros((3, 4, 5), np.float32)),
                           "circuit/vias"),
    "circuit negative net": (_circuit_file,
                             _replace("circuit/nets", np.full((3, 4, 5), -1, np.int32)),
                             "negative labels"),
    "circuit net beyond names": (_circuit_file,
                                 _replace("circuit/nets", np.full((3, 4, 5), 9, np.int32)),
                                 "label 9 but only 2 names"),
    "circuit layer outside": (_circuit_file,
                              _replace("circuit/layer_slices",
                                       np.array([[0, 1], [1, 2], [2, 4]], np.int64)),
                              "outside [0, 3]"),
    "circuit slices table": (_circuit_file,
                             _replace("circuit/layer_slices", np.zeros((3, 3), np.int64)),
                             "circuit/layer_slices"),
    "circuit via layer index": (_circuit_file,
                                _replace("circuit/via_layer", np.array([5], np.int32)),
                                "circuit/via_layer"),
    "circuit missing vias": (_circuit_file, _delete("circuit/vias"), "circuit/vias: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNFILES))
def test_bad_runfile_raises_data_error(tmp_path: Path, case: str) -> None:
    make, mutate, expected = BAD_RUNFILES[case]
    path = tmp_path / "bad_run_file.h5"
    make(path)
    mutate(path)
    reader = read_projections if make is _projection_file else read_ground_truth
    with pytest.raises(DataError) as excinfo:
        reader(path)
    assert_one_line_error(str(excinfo.value), "bad_run_file.h5")
    assert expected in str(excinfo.value)


def test_read_volume_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        read_volume(tmp_path / "volume_dip.h5")
    assert_one_line_error(str(excinfo.value), "volume_dip.h5")


# --------------------------------------------------------------------------- bad arguments


def test_invalid_objects_are_rejected_on_construction_or_write(tmp_path: Path) -> None:
    scan = make_scan()
    with pytest.raises(ValueError):
        Scan(**{**_scan_fields(scan), "positions_m": np.zeros((4, 3))})
    with pytest.raises(ValueError):
        Scan(**{**_scan_fields(scan), "probe": np.ones((3, 3))})
    with pytest.raises(ValueError):
        ProjectionSet(np.ones((3, 2, 2)), np.zeros(4), 61.0, 1e-8)
    with pytest.raises(ValueError):
        ProjectionSet(np.ones((3, 2, 2)), np.zeros(3), 61.0, 1e-8, extra={"angles_deg": [1, 2, 3]})
    with pytest.raises(ValueError):
        write_volume(tmp_path / "v.h5", np.full((2, 2, 2), np.nan), 1e-8)
    with pytest.raises(ValueError):
        write_cxi(tmp_path / "s.cxi", Scan(**{**_scan_fields(scan), "distance_m": -1.0}))
    assert list(tmp_path.iterdir()) == []


def _scan_fields(scan: Scan) -> dict:
    """Constructor arguments of ``scan`` (to build modified copies)."""
    names = (
        "counts positions_m energy_j distance_m x_pixel_size_m y_pixel_size_m "
        "rotation_angle_deg laminography_angle_deg probe mask"
    ).split()
    return {name: getattr(scan, name) for name in names}


def test_corrupted_bytes_give_only_data_errors(tmp_path: Path) -> None:
    """Random byte damage anywhere in a compressed scan: a valid Scan or one DataError line."""
    good = tmp_path / "good.cxi"
    write_cxi(good, make_scan(n=70, shape=(64, 64)))
    raw = good.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.cxi"
    for trial in range(100):
        data = bytearray(raw)
        # Half the trials hit the first 4 KiB, where superblock and headers live.
        limit = len(data) if trial % 2 else 4096
        for pos in rng.integers(0, limit, size=rng.integers(1, 20)):
            data[pos] = int(rng.integers(0, 256))
        damaged.write_bytes(bytes(data))
        try:
            read_cxi(damaged)
        except DataError as exc:
            assert_one_line_error(str(exc), "damaged.cxi")


def test_datasets_that_read_other_files_are_refused(tmp_path):
    """Untrusted files: an external link, external raw storage or a virtual dataset could
    pull any local file into a volume; each is one DataError naming the key."""
    import h5py

    from hpc_adept.errors import DataError
    from hpc_adept.io.h5read import open_h5, read_array

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["volume"] = np.ones((2, 2, 2), np.float32)
    crafted = tmp_path / "crafted.h5"
    with h5py.File(crafted, "w") as f:
        f.create_dataset("raw", shape=(2, 2, 2), dtype=np.float32,
                         external=[(str(secret), 0, 32)])
        f["linked"] = h5py.ExternalLink(str(other), "volume")
        f["group"] = h5py.ExternalLink(str(other), "/")  # /group/volume: a hard link there
        layout = h5py.VirtualLayout(shape=(2, 2, 2), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "volume", shape=(2, 2, 2))
        f.create_virtual_dataset("virtual", layout)
        f["soft"] = h5py.SoftLink("/group/volume")  # a soft link through the external one
    for key, needle in (("raw", "external files"), ("linked", "external link"),
                        ("group/volume", "external link"), ("/group/volume", "external link"),
                        ("virtual", "virtual dataset"), ("soft", "link to another file")):
        with open_h5(crafted) as f, pytest.raises(DataError, match=needle):
            read_array(f, key, crafted, ndim=3, dtype=np.float32)


def test_a_declared_size_beyond_memory_is_refused(tmp_path, monkeypatch):
    import h5py

    import hpc_adept.backend as backend
    from hpc_adept.errors import DataError
    from hpc_adept.io.h5read import open_h5, read_array

    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", shape=(64, 64, 64), dtype=np.float32, chunks=True,
                         compression="gzip")  # nothing written: a few hundred bytes
    monkeypatch.setattr(backend, "available_memory_bytes", lambda device, ranks=1: (2**16, ""))
    with open_h5(path) as f, pytest.raises(DataError, match="more than the"):
        read_array(f, "volume", path, ndim=3, dtype=np.float32)
