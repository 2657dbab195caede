"""CXI 1.6 scans: one ptychography scan per rotation angle (DESIGN section 4).

A dataset is a directory of ``*.cxi`` files, one per rotation angle. :func:`write_cxi`
writes one :class:`Scan` atomically; :func:`read_cxi` reads and validates one file (or
only its header); :func:`list_dataset` lists a directory's headers ordered by rotation
angle and checks that the scans belong together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.atomic import write_h5_atomic
from hpc_adept.io.h5read import (
    check_shape,
    data_error,
    open_h5,
    read_array,
    read_scalar,
    require_dataset,
)
from hpc_adept.lamino.geometry import tilt_problem

__all__ = [
    "CXI_VERSION",
    "ELEMENTARY_CHARGE_C",
    "INCOMPLETE_MARKER",
    "PLANCK_TIMES_C_JM",
    "Scan",
    "list_dataset",
    "read_cxi",
    "write_cxi",
]

PathLike = str | os.PathLike

CXI_VERSION = 160
ELEMENTARY_CHARGE_C = 1.602176634e-19  # J per eV (exact, SI 2019)
PLANCK_TIMES_C_JM = 6.62607015e-34 * 299792458.0  # h * c in J m (exact, SI 2019)


# A file that `adept simulate` keeps in the dataset directory while it writes the scans and
# removes when the dataset is complete: an interrupted run leaves it behind.
INCOMPLETE_MARKER = "SIMULATION_INCOMPLETE"

# Tolerances for "the same" angle across the files of one dataset, degrees.
ANGLE_TOLERANCE_DEG = 1e-6
ENERGY_RTOL = 1e-6

DATA = "/entry_1/data_1/data"
DETECTOR_DATA = "/entry_1/instrument_1/detector_1/data"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
ROTATION = "/entry_1/sample_1/geometry_1/rotation_angle_deg"
LAMINOGRAPHY = "/entry_1/sample_1/geometry_1/laminography_angle_deg"
ENERGY = "/entry_1/instrument_1/source_1/energy"
PROBE = "/entry_1/instrument_1/source_1/probe"
DISTANCE = "/entry_1/instrument_1/detector_1/distance"
X_PIXEL = "/entry_1/instrument_1/detector_1/x_pixel_size"
Y_PIXEL = "/entry_1/instrument_1/detector_1/y_pixel_size"
MASK = "/entry_1/instrument_1/detector_1/mask"
VERSION = "/cxi_version"


@dataclass(frozen=True, eq=False)
class Scan:
    """One ptychography scan at one rotation angle.

    Attributes
    ----------
    counts : numpy.ndarray or None
        ``[n_positions, ny, nx]`` float32 photon counts, DC at frame index
        ``(ny // 2, nx // 2)``. ``None`` for a header-only scan
        (``read_cxi(..., load_counts=False)``).
    positions_m : numpy.ndarray
        ``[n_positions, 3]`` float64 probe positions on the sample (x, y, z), metres;
        x along detector columns, y along rows.
    energy_j : float
        Photon energy, joules.
    distance_m : float
        Sample-detector distance, metres.
    x_pixel_size_m, y_pixel_size_m : float
        Detector pixel size along columns (x) and rows (y), metres.
    rotation_angle_deg : float
        Rotation angle theta of this scan, degrees.
    laminography_angle_deg : float
        Angle L between beam and rotation axis, degrees.
    probe : numpy.ndarray or None
        ``[ny, nx]`` complex64 initial probe, centred at ``((ny-1)/2, (nx-1)/2)``.
    mask : numpy.ndarray or None
        ``[ny, nx]`` bool, True = bad pixel.
    path : str or None
        The file the scan was read from.
    counts_shape : tuple of int or None
        ``(n_positions, ny, nx)``. Filled from ``counts`` when that is given; required
        when ``counts`` is None.

    Notes
    -----
    Arrays are converted to the dtypes above on construction; inconsistent shapes
    raise ValueError (a programming error: readers validate files first and raise
    DataError).
    """

    counts: np.ndarray | None
    positions_m: np.ndarray
    energy_j: float
    distance_m: float
    x_pixel_size_m: float
    y_pixel_size_m: float
    rotation_angle_deg: float
    laminography_angle_deg: float
    probe: np.ndarray | None = None
    mask: np.ndarray | None = None
    path: str | None = None
    counts_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        # Why object.__setattr__: the dataclass is frozen, but coercion belongs here so
        # that every Scan holds the documented dtypes whoever built it.
        coerce = {
            "positions_m": np.asarray(self.positions_m, dtype=np.float64),
            "energy_j": float(self.energy_j),
            "distance_m": float(self.distance_m),
            "x_pixel_size_m": float(self.x_pixel_size_m),
            "y_pixel_size_m": float(self.y_pixel_size_m),
            "rotation_angle_deg": float(self.rotation_angle_deg),
            "laminography_angle_deg": float(self.laminography_angle_deg),
        }
        if self.counts is not None:
            coerce["counts"] = np.asarray(self.counts, dtype=np.float32)
        if self.probe is not None:
            coerce["probe"] = np.asarray(self.probe, dtype=np.complex64)
        if self.mask is not None:
            coerce["mask"] = np.asarray(self.mask) != 0
        if self.path is not None:
            coerce["path"] = os.fspath(self.path)
        for name, value in coerce.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "counts_shape", self._resolved_counts_shape())
        self._check_shapes()

    def _resolved_counts_shape(self) -> tuple[int, int, int]:
        """``counts_shape`` from ``counts`` (when given) or the field itself."""
        if self.counts is None:
            if self.counts_shape is None:
                raise ValueError("Scan: counts_shape is required when counts is None")
            return tuple(int(n) for n in self.counts_shape)  # type: ignore[return-value]
        if self.counts.ndim != 3:
            raise ValueError(f"Scan: counts must be 3-D, got shape {self.counts.shape}")
        if self.counts_shape is not None and tuple(self.counts_shape) != self.counts.shape:
            raise ValueError(f"Scan: counts_shape {self.counts_shape} != {self.counts.shape}")
        return tuple(int(n) for n in self.counts.shape)  # type: ignore[return-value]

    def _check_shapes(self) -> None:
        """ValueError when positions, probe or mask do not fit the counts."""
        n, ny, nx = self.counts_shape  # type: ignore[misc]
        if self.positions_m.shape != (n, 3):
            raise ValueError(f"Scan: positions_m shape {self.positions_m.shape} != ({n}, 3)")
        for name in ("probe", "mask"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (ny, nx):
                raise ValueError(f"Scan: {name} shape {arr.shape} != frame shape {(ny, nx)}")

    @property
    def n_positions(self) -> int:
        """Number of probe positions (diffraction frames)."""
        return self.counts_shape[0]  # type: ignore[index]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Diffraction frame shape ``(ny, nx)``, pixels."""
        return self.counts_shape[1], self.counts_shape[2]  # type: ignore[index]

    @property
    def energy_ev(self) -> float:
        """Photon energy, electronvolts."""
        return self.energy_j / ELEMENTARY_CHARGE_C

    @property
    def wavelength_m(self) -> float:
        """Wavelength ``h c / E``, metres (about 2.0e-10 at 6.2 keV)."""
        return PLANCK_TIMES_C_JM / self.energy_j

    @property
    def object_pixel_size_m(self) -> tuple[float, float]:
        """Reconstruction pixel size ``(dy, dx)``, metres: ``lambda z / (N p)`` per axis."""
        ny, nx = self.frame_shape
        scale = self.wavelength_m * self.distance_m
        return scale / (ny * self.y_pixel_size_m), scale / (nx * self.x_pixel_size_m)


# --------------------------------------------------------------------------- validation


def _counts_problem(counts: np.ndarray) -> str | None:
    """Why ``counts`` cannot be photon counts, or None when they can."""
    if not np.isfinite(counts).all():
        return "contains NaN or infinite values"
    if (counts < 0).any():
        return f"contains negative counts (min {float(counts.min()):g})"
    if not counts.sum(dtype=np.float64) > 0:
        return "all counts are zero"
    return None


def _header_problem(scan: Scan) -> tuple[str, str] | None:
    """(key, why) for the first invalid header value of ``scan``, or None."""
    if not np.isfinite(scan.positions_m).all():
        return TRANSLATION, "contains NaN or infinite values"
    positive = {
        ENERGY: scan.energy_j,
        DISTANCE: scan.distance_m,
        X_PIXEL: scan.x_pixel_size_m,
        Y_PIXEL: scan.y_pixel_size_m,
    }
    for key, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            return key, f"must be a finite positive number, got {value:g}"
    for key, value in {
        ROTATION: scan.rotation_angle_deg,
        LAMINOGRAPHY: scan.laminography_angle_deg,
    }.items():
        if not np.isfinite(value):
            return key, f"not finite ({value})"
    tilt = tilt_problem(scan.laminography_angle_deg)
    if tilt:
        return LAMINOGRAPHY, tilt
    if scan.probe is not None:
        probe = _probe_problem(scan.probe)
        if probe:
            return PROBE, probe
    return None


def _probe_problem(probe: np.ndarray) -> str | None:
    """Why ``probe`` cannot start a reconstruction (non-finite, all zero), or None."""
    if not np.isfinite(probe).all():
        return "contains NaN or infinite values"
    # Why: an all-zero probe illuminates nothing; LSQ-ML would divide by zero later.
    if not np.abs(probe).max() > 0:
        return "the probe is all zero"
    return None


# --------------------------------------------------------------------------- writing


def _scan_datasets(scan: Scan) -> dict[str, np.ndarray]:
    """HDF5 path -> array for every dataset of ``scan``'s CXI file."""
    datasets = {
        VERSION: np.asarray(CXI_VERSION, dtype=np.int32),
        DATA: scan.counts,
        TRANSLATION: scan.positions_m,
        ENERGY: np.float64(scan.energy_j),
        DISTANCE: np.float64(scan.distance_m),
        X_PIXEL: np.float64(scan.x_pixel_size_m),
        Y_PIXEL: np.float64(scan.y_pixel_size_m),
        ROTATION: np.float64(scan.rotation_angle_deg),
        LAMINOGRAPHY: np.float64(scan.laminography_angle_deg),
    }
    if scan.probe is not None:
        datasets[PROBE] = scan.probe
    if scan.mask is not None:
        # CXI stores masks as unsigned integers, nonzero = bad pixel.
        datasets[MASK] = scan.mask.astype(np.uint8)
    return datasets


_UNITS = {
    TRANSLATION: "m",
    ENERGY: "J",
    DISTANCE: "m",
    X_PIXEL: "m",
    Y_PIXEL: "m",
    ROTATION: "deg",
    LAMINOGRAPHY: "deg",
}


def write_cxi(path: PathLike, scan: Scan) -> None:
    """Write ``scan`` as a CXI 1.6 file, atomically and reproducibly.

    The counts go to ``/entry_1/data_1/data``, with a soft link at
    ``/entry_1/instrument_1/detector_1/data``; see DESIGN section 4 for the other paths.

    Raises
    ------
    ValueError
        When ``scan`` is header-only or holds invalid values (NaN, negative counts,
        non-positive energy/distance/pixel size, ...): such a file could not be read back.
    """
    if scan.counts is None:
        raise ValueError(f"{path}: cannot write a header-only Scan (counts is None)")
    problem = _counts_problem(scan.counts)
    if problem:
        raise ValueError(f"{path}: {DATA}: {problem}")
    header = _header_problem(scan)
    if header:
        raise ValueError(f"{path}: {header[0]}: {header[1]}")
    write_h5_atomic(
        path,
        _scan_datasets(scan),
        dataset_attrs={key: {"units": unit} for key, unit in _UNITS.items()},
        soft_links={DETECTOR_DATA: DATA},
    )


# --------------------------------------------------------------------------- reading


def _counts_dataset(f: h5py.File, path: Path) -> tuple[str, h5py.Dataset]:
    """The counts dataset at either CXI location (data_1 first)."""
    for key in (DATA, DETECTOR_DATA):
        if f.get(key) is not None:
            return key, require_dataset(f, key, path)
    raise data_error(path, f"no diffraction data (neither {DATA} nor {DETECTOR_DATA})")


def _read_counts(
    f: h5py.File, path: Path, load: bool
) -> tuple[np.ndarray | None, tuple[int, int, int]]:
    """Counts (or None when not ``load``) and their shape, validated."""
    key, ds = _counts_dataset(f, path)
    if ds.dtype.kind not in "biuf":
        raise data_error(path, f"dtype {ds.dtype} is not real numeric", key)
    check_shape(ds.shape, 3, path, key)
    shape = tuple(int(n) for n in ds.shape)
    if not load:
        return None, shape  # type: ignore[return-value]
    counts = read_array(f, key, path, ndim=3, dtype=np.float32, finite=False)
    problem = _counts_problem(counts)
    if problem:
        raise data_error(path, problem, key)
    return counts, shape  # type: ignore[return-value]


def _read_positions(f: h5py.File, path: Path, n_frames: int) -> np.ndarray:
    """``[n_frames, 3]`` float64 positions, metres."""
    ds = require_dataset(f, TRANSLATION, path)
    if len(ds.shape) != 2 or ds.shape[1] != 3:
        raise data_error(path, f"expected shape (n_positions, 3), got {ds.shape}", TRANSLATION)
    if ds.shape[0] != n_frames:
        raise data_error(
            path, f"{ds.shape[0]} positions but the data has {n_frames} frames", TRANSLATION
        )
    return read_array(f, TRANSLATION, path, ndim=2, dtype=np.float64)


def _read_optional_frame(
    f: h5py.File, path: Path, key: str, frame_shape: tuple[int, int], kind: str, dtype: type
) -> np.ndarray | None:
    """Optional ``[ny, nx]`` probe or mask; None when absent."""
    if f.get(key) is None:
        return None
    return read_array(f, key, path, ndim=2, dtype=dtype, kind=kind, expected=frame_shape)


def _read_header_scalars(f: h5py.File, path: Path) -> dict[str, float]:
    """Energy, distance, pixel sizes (finite, positive) and the two angles (finite)."""
    return {
        "energy_j": read_scalar(f, ENERGY, path, positive=True),
        "distance_m": read_scalar(f, DISTANCE, path, positive=True),
        "x_pixel_size_m": read_scalar(f, X_PIXEL, path, positive=True),
        "y_pixel_size_m": read_scalar(f, Y_PIXEL, path, positive=True),
        "rotation_angle_deg": read_scalar(f, ROTATION, path),
        "laminography_angle_deg": read_scalar(f, LAMINOGRAPHY, path),
    }


def read_cxi(path: PathLike, load_counts: bool = True) -> Scan:
    """Read and validate one CXI scan.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.cxi`` file.
    load_counts : bool
        When False, read only the header: the counts' shape and dtype are checked from
        the dataset's metadata without reading the frames, and ``Scan.counts`` is None.

    Returns
    -------
    Scan

    Raises
    ------
    DataError
        One line naming the file (and dataset) when the file is missing, not HDF5,
        truncated, lacks a required dataset, or holds invalid values.
    """
    p = Path(path)
    with open_h5(p) as f:
        counts, shape = _read_counts(f, p, load_counts)
        positions = _read_positions(f, p, shape[0])
        scalars = _read_header_scalars(f, p)
        probe = _read_optional_frame(f, p, PROBE, shape[1:], "complex", np.complex64)
        mask = _read_optional_frame(f, p, MASK, shape[1:], "integer", np.bool_)
    tilt = tilt_problem(scalars["laminography_angle_deg"])
    if tilt:
        raise data_error(p, tilt, LAMINOGRAPHY)
    if probe is not None:
        problem = _probe_problem(probe)
        if problem:
            raise data_error(p, problem, PROBE)
    if mask is not None and mask.all():  # nonzero = bad pixel: nothing would be measured
        raise data_error(p, "every detector pixel is masked", MASK)
    return Scan(
        counts=counts,
        positions_m=positions,
        probe=probe,
        mask=mask,
        path=str(p),
        counts_shape=shape,
        **scalars,
    )


def check_counts(path: PathLike, frames_per_read: int = 64) -> None:
    """Validate a scan's counts frame block by frame block (bounded memory).

    Raises
    ------
    DataError
        One line naming the file and dataset when the counts hold NaN/Inf or negative
        values, are all zero, or cannot be read.
    """
    p = Path(path)
    with open_h5(p) as f:
        key, ds = _counts_dataset(f, p)
        check_shape(ds.shape, 3, p, key)
        total = 0.0
        for start in range(0, ds.shape[0], frames_per_read):
            block = np.asarray(ds[start:start + frames_per_read], dtype=np.float32)
            if not np.isfinite(block).all():
                raise data_error(p, "contains NaN or infinite values", key)
            if (block < 0).any():
                raise data_error(p, f"contains negative counts (min {float(block.min()):g})",
                                 key)
            total += float(block.sum(dtype=np.float64))
        if not total > 0:
            raise data_error(p, "all counts are zero", key)


# --------------------------------------------------------------------------- datasets


def _entry_problem(entry: Path) -> str | None:
    """Why a ``*.cxi`` directory entry is no readable scan file, or None."""
    if entry.is_file():  # follows symbolic links
        return None
    if entry.is_symlink():
        return ("dangling symbolic link (its target is missing, on an unmounted file "
                "system, or the link is a loop)")
    if entry.is_dir():
        return "is a directory, not a scan file"
    return "not a regular file"


def _cxi_files(directory: Path) -> list[Path]:
    """The ``*.cxi`` files of ``directory``, sorted by name.

    Raises
    ------
    DataError
        When the directory is missing or empty, or when a ``*.cxi`` entry is not a readable
        file: a scan on an unmounted file system must not vanish from the dataset silently.
    """
    if not directory.is_dir():
        raise data_error(directory, "dataset directory not found")
    marker = directory / INCOMPLETE_MARKER
    if marker.exists() or marker.is_symlink():
        raise data_error(directory, f"incomplete dataset: an 'adept simulate' run writing it "
                                    f"was interrupted ({INCOMPLETE_MARKER} is present); run "
                                    f"adept simulate again")
    files = sorted(directory.glob("*.cxi"))
    for entry in files:
        problem = _entry_problem(entry)
        if problem:
            raise data_error(entry, problem)
    if not files:
        raise data_error(directory, "dataset directory holds no *.cxi files")
    return files


def _check_unique_angles(directory: Path, scans: list[Scan]) -> None:
    """DataError when two scans (sorted by angle) share a rotation angle."""
    for a, b in zip(scans, scans[1:], strict=False):
        if b.rotation_angle_deg - a.rotation_angle_deg <= ANGLE_TOLERANCE_DEG:
            raise data_error(
                directory,
                f"{Path(a.path).name} and {Path(b.path).name} have the same rotation angle "
                f"{a.rotation_angle_deg:g} deg",
            )


def _mismatch(first: Scan, scan: Scan) -> str | None:
    """What ``scan`` disagrees with ``first`` on, or None."""
    lam_diff = abs(scan.laminography_angle_deg - first.laminography_angle_deg)
    if lam_diff > ANGLE_TOLERANCE_DEG:
        return (
            f"laminography angle {scan.laminography_angle_deg:g} deg differs from "
            f"{first.laminography_angle_deg:g} deg"
        )
    if not np.isclose(scan.energy_j, first.energy_j, rtol=ENERGY_RTOL, atol=0.0):
        return f"energy {scan.energy_ev:g} eV differs from {first.energy_ev:g} eV"
    if scan.frame_shape != first.frame_shape:
        return f"frame shape {scan.frame_shape} differs from {first.frame_shape}"
    return None


def _check_consistent(directory: Path, scans: list[Scan]) -> None:
    """DataError when a scan's laminography angle, energy or frame shape differs."""
    first = scans[0]
    for scan in scans[1:]:
        problem = _mismatch(first, scan)
        if problem:
            raise data_error(
                directory, f"{Path(scan.path).name}: {problem} in {Path(first.path).name}"
            )


def list_dataset(directory: PathLike) -> list[Scan]:
    """Headers of all scans of a dataset directory, ordered by rotation angle.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory of ``*.cxi`` files (not searched recursively).

    Returns
    -------
    list of Scan
        Header-only scans (``counts`` is None; ``path`` set), by increasing rotation angle.

    Raises
    ------
    DataError
        When the directory is missing or holds no ``*.cxi`` file, when an ``adept
        simulate`` writing it was interrupted, when a ``*.cxi`` entry is no readable file
        (dangling symbolic link, directory), when any file is invalid, when two scans
        share a rotation angle (within 1e-6 deg), or when laminography angle, energy or
        frame shape differ between scans.
    """
    d = Path(directory)
    scans = [read_cxi(p, load_counts=False) for p in _cxi_files(d)]
    scans.sort(key=lambda s: (s.rotation_angle_deg, s.path))
    _check_unique_angles(d, scans)
    _check_consistent(d, scans)
    return scans
