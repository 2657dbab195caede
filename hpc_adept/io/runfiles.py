"""Run-directory HDF5 files: projections, aligned projections, volumes, ground truth.

Layouts (DESIGN section 4):

``projections.h5`` / ``aligned.h5``
    ``/projections`` ``[n_angles, nv, nu]`` float32 (radians of phase), ``/angles_deg``
    ``[n_angles]`` float64, optional ``/probes`` ``[n_angles, N, N]`` complex64, optional
    per-angle extras beside them (``/shifts_px`` ``[n_angles, 2]`` (row, col) pixels,
    ``/fourier_error``, ...); root attributes ``tilt_deg`` and ``pixel_size_m``.
``volume_fbp.h5`` / ``volume_dip.h5``
    ``/volume`` ``[nz, ny, nx]`` float32; root attribute ``voxel_size_m`` and any others.
``ground_truth.h5``
    ``/volume`` ``[nz, ny, nx]`` float32 (phase per voxel, radians), ``/occupancy``
    ``[nz, ny, nx]`` uint8 (1 = metal); root attribute ``voxel_size_m``; optionally the
    circuit truth (:class:`CircuitTruth`): ``/circuit/nets`` and ``/circuit/vias``
    ``[nz, ny, nx]`` int32 label volumes, ``/circuit/layer_names`` ``[n_layers]`` bytes,
    ``/circuit/layer_slices`` ``[n_layers, 2]`` int64 (start, stop), ``/circuit/layer_is_cut``
    ``[n_layers]`` uint8, ``/circuit/net_names`` ``[n_nets]`` bytes (net id ``i + 1``) and
    ``/circuit/via_layer`` ``[n_vias]`` int32 (index into the layer names of via id ``i + 1``'s
    cut layer, -1: unknown).

All writes are atomic and reproducible (:mod:`hpc_adept.io.atomic`); all reads validate
(:mod:`hpc_adept.io.h5read`) and raise a one-line :class:`~hpc_adept.errors.DataError`
naming the file and dataset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from hpc_adept.io.atomic import write_h5_atomic
from hpc_adept.io.h5read import (
    check_shape,
    data_error,
    open_h5,
    read_array,
    read_attrs,
    read_scalar_attr,
    require_dataset,
)
from hpc_adept.lamino.geometry import tilt_problem

__all__ = [
    "CircuitTruth",
    "GroundTruth",
    "ProjectionSet",
    "read_ground_truth",
    "read_projections",
    "read_sample_kind",
    "read_volume",
    "stored_projection_shape",
    "write_ground_truth",
    "write_projections",
    "write_volume",
]

PathLike = str | os.PathLike

PROJECTIONS = "projections"
ANGLES = "angles_deg"
PROBES = "probes"
SHIFTS = "shifts_px"
VOLUME = "volume"
OCCUPANCY = "occupancy"
CIRCUIT = "circuit"
TILT_ATTR = "tilt_deg"
# the alignment stage's record of its run (JSON; hpc_adept.stages.align writes it, the
# report reads it)
HISTORY_NAME = "align_history.json"
PIXEL_ATTR = "pixel_size_m"
VOXEL_ATTR = "voxel_size_m"
SAMPLE_ATTR = "sample"
SAMPLE_KINDS = ("extended", "isolated")


_RESERVED = frozenset({PROJECTIONS, ANGLES, PROBES})
# Extra names become root dataset names: keep them plain identifiers.
_EXTRA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _nonfinite(array: np.ndarray) -> bool:
    """True when a float/complex array holds NaN or infinity."""
    return array.dtype.kind in "fc" and not np.isfinite(array).all()


def _positive_finite(value: float) -> bool:
    """True for a finite number > 0."""
    return bool(np.isfinite(value) and value > 0)


# --------------------------------------------------------------------------- projections


@dataclass(frozen=True, eq=False)
class ProjectionSet:
    """Phase projections over rotation angles (``projections.h5``, ``aligned.h5``).

    Attributes
    ----------
    projections : numpy.ndarray
        ``[n_angles, nv, nu]`` float32 phase projections, radians, indexed ``[row, col]``.
    angles_deg : numpy.ndarray
        ``[n_angles]`` float64 rotation angles theta, degrees.
    tilt_deg : float
        Laminography angle L, degrees.
    pixel_size_m : float
        Projection pixel size, metres.
    probes : numpy.ndarray or None
        ``[n_angles, N, N]`` complex64 reconstructed probes.
    extra : mapping of str to numpy.ndarray
        Per-angle arrays stored beside (first axis ``n_angles``, 1-D or 2-D, real, finite),
        e.g. ``"shifts_px"`` ``[n_angles, 2]`` (row, col) pixels or ``"fourier_error"``.
        Names are identifiers other than ``projections``, ``angles_deg``, ``probes``.
    sample_kind : {'extended', 'isolated'} or None
        The kind of sample ``adept align`` decided these projections show (root attribute
        ``sample`` of ``aligned.h5``; ``recon.sample: auto`` follows it, since align looked
        at the whole measured window and the crop may have cut its border); None where
        nothing decided it.

    Notes
    -----
    Arrays are converted to the dtypes above on construction; inconsistent shapes or
    names raise ValueError.
    """

    projections: np.ndarray
    angles_deg: np.ndarray
    tilt_deg: float
    pixel_size_m: float
    probes: np.ndarray | None = None
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    sample_kind: Literal["extended", "isolated"] | None = None

    def __post_init__(self) -> None:
        coerce: dict[str, Any] = {
            "projections": np.asarray(self.projections, dtype=np.float32),
            "angles_deg": np.asarray(self.angles_deg, dtype=np.float64),
            "tilt_deg": float(self.tilt_deg),
            "pixel_size_m": float(self.pixel_size_m),
            "extra": {str(k): np.asarray(v) for k, v in self.extra.items()},
        }
        if self.probes is not None:
            coerce["probes"] = np.asarray(self.probes, dtype=np.complex64)
        for name, value in coerce.items():
            object.__setattr__(self, name, value)
        problem = _projection_set_problem(self)
        if problem:
            raise ValueError(f"ProjectionSet: {problem}")

    @property
    def n_angles(self) -> int:
        """Number of projections."""
        return int(self.projections.shape[0])

    @property
    def shifts_px(self) -> np.ndarray | None:
        """``[n_angles, 2]`` (row, col) alignment shifts, pixels, when stored."""
        return self.extra.get(SHIFTS)


def _extra_problem(name: str, array: np.ndarray, n: int) -> str | None:
    """Why ``array`` cannot be stored as extra ``name`` of ``n`` projections, or None."""
    if name in _RESERVED or not _EXTRA_NAME.match(name):
        return f"extra name {name!r} is reserved or not an identifier"
    if array.dtype.kind not in "biuf" or array.ndim not in (1, 2) or array.shape[0] != n:
        return (
            f"extra {name!r} must be real 1-D/2-D with first axis {n}, got "
            f"{array.dtype} {array.shape}"
        )
    if name == SHIFTS and array.shape != (n, 2):
        return f"{SHIFTS} must have shape ({n}, 2), got {array.shape}"
    return None


def _projection_set_problem(ps: ProjectionSet) -> str | None:
    """Structural problem of ``ps`` (shapes, names), or None."""
    if ps.projections.ndim != 3 or 0 in ps.projections.shape:
        return f"projections must be non-empty 3-D, got shape {ps.projections.shape}"
    n = ps.n_angles
    if ps.angles_deg.shape != (n,):
        return f"angles_deg shape {ps.angles_deg.shape} != ({n},)"
    if ps.probes is not None and (ps.probes.ndim != 3 or ps.probes.shape[0] != n):
        return f"probes must be [{n}, N, N], got shape {ps.probes.shape}"
    if ps.sample_kind is not None and ps.sample_kind not in SAMPLE_KINDS:
        return (f"sample_kind must be one of {SAMPLE_KINDS} or None, got "
                f"{ps.sample_kind!r}")
    for name, array in ps.extra.items():
        problem = _extra_problem(name, array, n)
        if problem:
            return problem
    return None


def _projection_values_problem(ps: ProjectionSet) -> str | None:
    """Value problem of ``ps`` (non-finite data, bad pixel size), or None."""
    arrays = {PROJECTIONS: ps.projections, ANGLES: ps.angles_deg, **ps.extra}
    if ps.probes is not None:
        arrays[PROBES] = ps.probes
    for name, array in arrays.items():
        if _nonfinite(array):
            return f"{name} contains NaN or infinite values"
    if not np.isfinite(ps.tilt_deg):
        return f"{TILT_ATTR} is not finite"
    if tilt_problem(ps.tilt_deg):
        return f"{TILT_ATTR}: {tilt_problem(ps.tilt_deg)}"
    if not _positive_finite(ps.pixel_size_m):
        return f"{PIXEL_ATTR} must be finite and positive, got {ps.pixel_size_m:g}"
    return None


def write_projections(path: PathLike, ps: ProjectionSet) -> None:
    """Write ``ps`` to ``path`` (``projections.h5`` or ``aligned.h5``) atomically.

    Raises
    ------
    ValueError
        When ``ps`` holds non-finite values or a non-positive pixel size.
    """
    problem = _projection_values_problem(ps)
    if problem:
        raise ValueError(f"{path}: {problem}")
    datasets = {PROJECTIONS: ps.projections, ANGLES: ps.angles_deg, **ps.extra}
    if ps.probes is not None:
        datasets[PROBES] = ps.probes
    attrs: dict[str, Any] = {TILT_ATTR: ps.tilt_deg, PIXEL_ATTR: ps.pixel_size_m}
    if ps.sample_kind is not None:
        attrs[SAMPLE_ATTR] = ps.sample_kind
    write_h5_atomic(path, datasets, attrs=attrs)


def _read_angles(f: h5py.File, path: Path, n: int) -> np.ndarray:
    """``[n]`` float64 finite angles; DataError naming both lengths on a mismatch."""
    ds = require_dataset(f, ANGLES, path)
    if len(ds.shape) == 1 and ds.shape[0] != n:
        raise data_error(path, f"{ds.shape[0]} angles for {n} projections", ANGLES)
    return read_array(f, ANGLES, path, ndim=1, dtype=np.float64, expected=(n,))


def _read_probes(f: h5py.File, path: Path, n: int) -> np.ndarray | None:
    """Optional ``[n, N, N]`` complex64 probes."""
    if f.get(PROBES) is None:
        return None
    return read_array(
        f, PROBES, path, ndim=3, dtype=np.complex64, kind="complex", expected=(n, None, None)
    )


def _read_extras(f: h5py.File, path: Path, n: int) -> dict[str, np.ndarray]:
    """Every other root dataset, validated as a per-angle extra."""
    extras: dict[str, np.ndarray] = {}
    for name in sorted(f):
        if name in _RESERVED or not isinstance(f.get(name), h5py.Dataset):
            continue
        if not _EXTRA_NAME.match(name):
            raise data_error(path, "dataset name is not an identifier", name)
        ds = f[name]
        ndim = len(ds.shape)
        if ndim not in (1, 2):
            raise data_error(path, f"expected a 1-D or 2-D per-angle array, got {ds.shape}", name)
        expected = (n, 2) if name == SHIFTS else (n,) + (None,) * (ndim - 1)
        extras[name] = read_array(f, name, path, ndim=ndim, dtype=ds.dtype, expected=expected)
    return extras


def read_projections(path: PathLike) -> ProjectionSet:
    """Read and validate ``projections.h5`` or ``aligned.h5``.

    Returns
    -------
    ProjectionSet

    Raises
    ------
    DataError
        Missing/corrupt file, missing ``/projections`` or ``/angles_deg`` or attributes,
        wrong dimensions or dtypes, non-finite values, a ``tilt_deg`` outside (0, 90], or
        lengths that disagree with the number of projections.
    """
    p = Path(path)
    with open_h5(p) as f:
        projections = read_array(f, PROJECTIONS, p, ndim=3, dtype=np.float32)
        n = projections.shape[0]
        angles = _read_angles(f, p, n)
        probes = _read_probes(f, p, n)
        extras = _read_extras(f, p, n)
        tilt = read_scalar_attr(f, TILT_ATTR, p)
        pixel = read_scalar_attr(f, PIXEL_ATTR, p, positive=True)
        sample = _read_sample_kind(f, p)
    problem = tilt_problem(tilt)
    if problem:
        raise data_error(p, problem, f"@{TILT_ATTR}")
    return ProjectionSet(projections, angles, tilt, pixel, probes=probes, extra=extras,
                         sample_kind=sample)


def _read_sample_kind(f: h5py.File, path: Path) -> str | None:
    """The root attribute ``sample`` (``extended`` / ``isolated``), or None without one."""
    if SAMPLE_ATTR not in f.attrs:
        return None
    try:
        value = f.attrs[SAMPLE_ATTR]
    except (OSError, TypeError, ValueError) as exc:
        raise data_error(path, f"unreadable attribute: {exc}", f"@{SAMPLE_ATTR}") from None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes | np.bytes_):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        value = value.strip()  # fixed-length strings of other writers are space-padded
    if not isinstance(value, str) or value not in SAMPLE_KINDS:
        raise data_error(path, f"expected one of {SAMPLE_KINDS}, got {str(value)[:40]!r}",
                         f"@{SAMPLE_ATTR}")
    return value


def read_sample_kind(path: PathLike) -> str | None:
    """The kind of sample ``adept align`` stored in ``path`` (``aligned.h5``'s root
    attribute ``sample``: ``extended`` / ``isolated``), None when the file has none.

    Raises
    ------
    DataError
        Missing/corrupt file or an attribute of another value.
    """
    p = Path(path)
    with open_h5(p) as f:
        return _read_sample_kind(f, p)


def stored_projection_shape(path: PathLike) -> tuple[int, int, int]:
    """Shape ``(n_angles, nv, nu)`` of ``/projections`` in ``path``, without reading the data.

    For the memory guards of the plan phase, which must not read a large file.

    Raises
    ------
    DataError
        Missing/corrupt file, no ``/projections`` dataset, or one that is not a non-empty
        real 3-D array.
    """
    p = Path(path)
    with open_h5(p) as f:
        ds = require_dataset(f, PROJECTIONS, p)
        if ds.dtype.kind not in "biuf":
            raise data_error(p, f"dtype {ds.dtype} is not real", PROJECTIONS)
        check_shape(ds.shape, 3, p, PROJECTIONS)
        return tuple(int(n) for n in ds.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------- volumes


def _volume_problem(volume: np.ndarray, voxel_size_m: float) -> str | None:
    """Why ``volume`` / ``voxel_size_m`` cannot be written, or None."""
    if volume.ndim != 3 or 0 in volume.shape:
        return f"volume must be non-empty 3-D [nz, ny, nx], got shape {volume.shape}"
    if _nonfinite(volume):
        return "volume contains NaN or infinite values"
    if not _positive_finite(voxel_size_m):
        return f"{VOXEL_ATTR} must be finite and positive, got {voxel_size_m:g}"
    return None


def _merged_attrs(attrs: Mapping[str, Any] | None, voxel_size_m: float) -> dict[str, Any]:
    """User attributes plus ``voxel_size_m``; ValueError when the user tries to set it."""
    attrs = dict(attrs or {})
    if VOXEL_ATTR in attrs:
        raise ValueError(f"pass {VOXEL_ATTR} as the argument, not in attrs")
    attrs[VOXEL_ATTR] = float(voxel_size_m)
    return attrs


def write_volume(
    path: PathLike,
    volume: np.ndarray,
    voxel_size_m: float,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a reconstructed volume (``volume_fbp.h5``, ``volume_dip.h5``) atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    volume : numpy.ndarray
        ``[nz, ny, nx]`` phase per voxel, radians; stored as float32.
    voxel_size_m : float
        Voxel edge, metres.
    attrs : mapping, optional
        Further root attributes (str, numbers, numeric arrays), e.g. the method name.

    Raises
    ------
    ValueError
        Wrong dimensions, non-finite values, or a non-positive voxel size.
    """
    volume = np.asarray(volume, dtype=np.float32)
    problem = _volume_problem(volume, float(voxel_size_m))
    if problem:
        raise ValueError(f"{path}: {problem}")
    write_h5_atomic(path, {VOLUME: volume}, attrs=_merged_attrs(attrs, voxel_size_m))


def _read_volume_and_attrs(f: h5py.File, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``/volume`` as finite float32 ``[nz, ny, nx]`` and the root attributes."""
    volume = read_array(f, VOLUME, path, ndim=3, dtype=np.float32)
    attrs = read_attrs(f, path)
    attrs[VOXEL_ATTR] = read_scalar_attr(f, VOXEL_ATTR, path, positive=True)
    return volume, attrs


def read_volume(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and validate a volume file.

    Returns
    -------
    volume : numpy.ndarray
        ``[nz, ny, nx]`` float32, finite.
    attrs : dict
        Root attributes as plain values; ``attrs["voxel_size_m"]`` is a positive float
        (metres).

    Raises
    ------
    DataError
        Missing/corrupt file, missing ``/volume`` or ``voxel_size_m``, wrong dimensions
        or dtype, non-finite values.
    """
    p = Path(path)
    with open_h5(p) as f:
        return _read_volume_and_attrs(f, p)


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, eq=False)
class CircuitTruth:
    """The circuit of a phantom: which net and which via each voxel belongs to.

    Attributes
    ----------
    nets : numpy.ndarray
        ``[nz, ny, nx]`` int32 net id (``net_names[id - 1]``) of the metal at each voxel, 0
        where there is none.
    vias : numpy.ndarray
        ``[nz, ny, nx]`` int32 via instance id (1, 2, ...) of the cut metal at each voxel,
        0 elsewhere.
    layers : dict of str to (int, int)
        Every metal and cut layer's slices ``(start, stop)`` along z (``0 <= start < stop
        <= nz``).
    cut_layers : tuple of str
        The names of ``layers`` that are cut (via) layers; the others are metal layers.
    net_names : tuple of str
        Net names by id (index ``id - 1``).
    via_layers : tuple of str
        The cut layer of each via id (index ``id - 1``); ``""`` when unknown.
    """

    nets: np.ndarray
    vias: np.ndarray
    layers: Mapping[str, tuple[int, int]]
    cut_layers: tuple[str, ...] = ()
    net_names: tuple[str, ...] = ()
    via_layers: tuple[str, ...] = ()

    def metal_layers(self) -> dict[str, tuple[int, int]]:
        """The metal layers' slices."""
        return {k: v for k, v in self.layers.items() if k not in self.cut_layers}

    def cut_layer_slices(self) -> dict[str, tuple[int, int]]:
        """The cut layers' slices."""
        return {k: v for k, v in self.layers.items() if k in self.cut_layers}

    def via_ids(self, layer: str) -> np.ndarray:
        """``[k]`` int: the via ids of cut layer ``layer``."""
        return np.flatnonzero(np.asarray(self.via_layers, dtype=object) == layer) + 1


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A simulated dataset's ground truth (``ground_truth.h5``).

    Attributes
    ----------
    volume : numpy.ndarray
        ``[nz, ny, nx]`` float32 phase per voxel, radians.
    occupancy : numpy.ndarray or None
        ``[nz, ny, nx]`` uint8, 1 = metal, 0 = dielectric. None only when read with
        ``require_occupancy=False`` from a file without it (a dense reconstruction used
        as the reference).
    voxel_size_m : float
        Voxel edge, metres.
    attrs : dict
        All root attributes as plain values (``voxel_size_m`` included).
    circuit : CircuitTruth or None
        Net and via labels and layer slices, when the file has them (``/circuit``).
    """

    volume: np.ndarray
    occupancy: np.ndarray | None
    voxel_size_m: float
    attrs: Mapping[str, Any] = field(default_factory=dict)
    circuit: CircuitTruth | None = None


def _occupancy_problem(occupancy: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """Why ``occupancy`` is not a 0/1 mask of ``shape``, or None."""
    if occupancy.shape != shape:
        return f"shape {occupancy.shape} != volume shape {shape}"
    if occupancy.dtype.kind not in "biu":
        return f"dtype {occupancy.dtype} is not integer"
    if occupancy.size and int(occupancy.max()) > 1:
        return "values must be 0 or 1"
    if occupancy.size and occupancy.dtype.kind == "i" and int(occupancy.min()) < 0:
        return "values must be 0 or 1"
    return None


def write_ground_truth(
    path: PathLike,
    volume: np.ndarray,
    occupancy: np.ndarray,
    voxel_size_m: float,
    attrs: Mapping[str, Any] | None = None,
    circuit: CircuitTruth | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write ``ground_truth.h5`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    volume : numpy.ndarray
        ``[nz, ny, nx]`` phase per voxel, radians; stored as float32.
    occupancy : numpy.ndarray
        ``[nz, ny, nx]`` 0/1 (bool or integer); stored as uint8, 1 = metal.
    voxel_size_m : float
        Voxel edge, metres.
    attrs : mapping, optional
        Further root attributes.
    circuit : CircuitTruth, optional
        The circuit labels, stored under ``/circuit``.
    extras : mapping of str to numpy.ndarray, optional
        Further root datasets (e.g. a simulated extended sample's widened occupancy,
        ``/extended_occupancy``), stored as given; :func:`read_ground_truth` ignores them.

    Raises
    ------
    ValueError
        Wrong dimensions, non-finite values, occupancy not 0/1 of the volume's shape,
        non-positive voxel size, circuit labels that do not fit the volume, an extra that
        takes a name of the file's own datasets.
    """
    volume = np.asarray(volume, dtype=np.float32)
    occupancy = np.asarray(occupancy)
    problem = _volume_problem(volume, float(voxel_size_m))
    if problem:
        raise ValueError(f"{path}: {problem}")
    problem = _occupancy_problem(occupancy, volume.shape)
    if problem:
        raise ValueError(f"{path}: {OCCUPANCY}: {problem}")
    datasets = {VOLUME: volume, OCCUPANCY: occupancy.astype(np.uint8)}
    if circuit is not None:
        datasets.update(_circuit_datasets(circuit))
        problem = _circuit_problem(circuit, volume.shape)
        if problem:
            raise ValueError(f"{path}: {CIRCUIT}: {problem}")
    for name, array in (extras or {}).items():
        if name.strip("/") in (VOLUME.strip("/"), OCCUPANCY.strip("/"), CIRCUIT.strip("/")):
            raise ValueError(f"{path}: extra dataset {name!r} takes a reserved name")
        datasets[name] = np.asarray(array)
    write_h5_atomic(path, datasets, attrs=_merged_attrs(attrs, voxel_size_m))


def _names(values: tuple[str, ...] | list[str]) -> np.ndarray:
    """Names as a fixed-length UTF-8 bytes array (HDF5 fixed strings)."""
    encoded = [v.encode("utf-8") for v in values]
    return np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


def _circuit_datasets(circuit: CircuitTruth) -> dict[str, np.ndarray]:
    """The ``/circuit`` datasets of ``circuit`` (see the module docstring)."""
    names = list(circuit.layers)
    index = {name: i for i, name in enumerate(names)}
    return {
        f"{CIRCUIT}/nets": np.asarray(circuit.nets, np.int32),
        f"{CIRCUIT}/vias": np.asarray(circuit.vias, np.int32),
        f"{CIRCUIT}/layer_names": _names(names),
        f"{CIRCUIT}/layer_slices": np.array([circuit.layers[n] for n in names],
                                            np.int64).reshape(-1, 2),
        f"{CIRCUIT}/layer_is_cut": np.array([n in circuit.cut_layers for n in names],
                                            np.uint8),
        f"{CIRCUIT}/net_names": _names(circuit.net_names),
        f"{CIRCUIT}/via_layer": np.array([index.get(v, -1) for v in circuit.via_layers],
                                         np.int32),
    }


def _labels_problem(labels: np.ndarray, shape: tuple[int, ...], n_ids: int | None
                    ) -> str | None:
    """Why ``labels`` is not a label volume of ``shape`` with ids in ``[0, n_ids]``."""
    if labels.shape != shape:
        return f"shape {labels.shape} != volume shape {shape}"
    if labels.dtype.kind not in "iu":
        return f"dtype {labels.dtype} is not integer"
    if labels.size and int(labels.min()) < 0:
        return "negative labels"
    if labels.size and n_ids is not None and int(labels.max()) > n_ids:
        return f"label {int(labels.max())} but only {n_ids} names"
    if labels.size and int(labels.max()) > labels.size:  # ids index tables of that length
        return f"label {int(labels.max())} exceeds the number of voxels {labels.size}"
    return None


def _circuit_problem(circuit: CircuitTruth, shape: tuple[int, ...]) -> str | None:
    """Why ``circuit`` does not fit a volume of ``shape``, or None."""
    for key, labels, n_ids in (("nets", circuit.nets, len(circuit.net_names) or None),
                               ("vias", circuit.vias, len(circuit.via_layers) or None)):
        problem = _labels_problem(np.asarray(labels), shape, n_ids)
        if problem:
            return f"{key}: {problem}"
    for name, (k0, k1) in circuit.layers.items():
        if not 0 <= k0 < k1 <= shape[0]:
            return f"layer {name!r}: slices ({k0}, {k1}) outside [0, {shape[0]}]"
    unknown = set(circuit.cut_layers) - set(circuit.layers)
    if unknown:
        return f"cut layers {sorted(unknown)} have no slices"
    return None


def _read_occupancy(f: h5py.File, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """``/occupancy`` as uint8 0/1 of ``shape``."""
    ds = require_dataset(f, OCCUPANCY, path)
    if ds.dtype.kind not in "biu":
        raise data_error(path, f"dtype {ds.dtype} is not integer", OCCUPANCY)
    if tuple(ds.shape) != shape:
        raise data_error(path, f"shape {ds.shape} != volume shape {shape}", OCCUPANCY)
    raw = np.asarray(ds[()])
    problem = _occupancy_problem(raw, shape)
    if problem:
        raise data_error(path, problem, OCCUPANCY)
    return raw.astype(np.uint8)


def read_ground_truth(path: PathLike, require_occupancy: bool = True) -> GroundTruth:
    """Read and validate ``ground_truth.h5`` (or any reference volume file).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    require_occupancy : bool
        When False, a file without ``/occupancy`` gives ``occupancy=None``.

    Returns
    -------
    GroundTruth

    Raises
    ------
    DataError
        As :func:`read_volume`, plus a missing (when required) or invalid ``/occupancy``.
    """
    p = Path(path)
    with open_h5(p) as f:
        volume, attrs = _read_volume_and_attrs(f, p)
        occupancy = None
        if require_occupancy or f.get(OCCUPANCY) is not None:
            occupancy = _read_occupancy(f, p, volume.shape)
        circuit = _read_circuit(f, p, volume.shape) if f.get(CIRCUIT) is not None else None
    return GroundTruth(volume, occupancy, attrs[VOXEL_ATTR], attrs, circuit)


def _read_names(f: h5py.File, path: Path, key: str) -> tuple[str, ...]:
    """A ``/circuit`` names dataset: 1-D bytes (UTF-8), possibly empty."""
    ds = require_dataset(f, key, path)
    if ds.dtype.kind not in "SO" or ds.ndim != 1:
        raise data_error(path, f"expected 1-D strings, got {ds.dtype} {ds.shape}", key)
    try:
        return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[()])
    except UnicodeDecodeError as exc:
        raise data_error(path, f"not UTF-8: {exc}", key) from None


def _read_small(f: h5py.File, path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A small integer ``/circuit`` table of ``shape`` (``-1``: any length), as int64."""
    ds = require_dataset(f, key, path)
    if ds.dtype.kind not in "iu":
        raise data_error(path, f"dtype {ds.dtype} is not integer", key)
    if len(ds.shape) != len(shape) or any(e not in (-1, n) for e, n in zip(shape, ds.shape,
                                                                            strict=False)):
        raise data_error(path, f"shape {ds.shape}, expected "
                               f"({', '.join('*' if e < 0 else str(e) for e in shape)})", key)
    return np.asarray(ds[()]).astype(np.int64)


def _read_circuit(f: h5py.File, path: Path, shape: tuple[int, ...]) -> CircuitTruth:
    """``/circuit`` as a :class:`CircuitTruth`, validated against the volume's ``shape``."""
    labels = {}
    for key in ("nets", "vias"):
        ds = require_dataset(f, f"{CIRCUIT}/{key}", path)
        if ds.dtype.kind not in "iu" or tuple(ds.shape) != shape:
            raise data_error(path, f"{ds.dtype} {ds.shape}, expected integer labels of the "
                                   f"volume's shape {shape}", f"{CIRCUIT}/{key}")
        labels[key] = np.asarray(ds[()]).astype(np.int32)
    names = _read_names(f, path, f"{CIRCUIT}/layer_names")
    n = len(names)
    slices = _read_small(f, path, f"{CIRCUIT}/layer_slices", (n, 2))
    is_cut = _read_small(f, path, f"{CIRCUIT}/layer_is_cut", (n,))
    via_layer = _read_small(f, path, f"{CIRCUIT}/via_layer", (-1,))
    if via_layer.size and not (-1 <= via_layer.min() and via_layer.max() < n):
        raise data_error(path, f"indices outside [-1, {n})", f"{CIRCUIT}/via_layer")
    circuit = CircuitTruth(
        nets=labels["nets"], vias=labels["vias"],
        layers={name: (int(a), int(b)) for name, (a, b) in zip(names, slices, strict=True)},
        cut_layers=tuple(name for name, c in zip(names, is_cut, strict=True) if c),
        net_names=_read_names(f, path, f"{CIRCUIT}/net_names"),
        via_layers=tuple(names[i] if i >= 0 else "" for i in via_layer))
    problem = _circuit_problem(circuit, shape)
    if problem:
        raise data_error(path, problem, CIRCUIT)
    return circuit


def read_projection_sample(path: PathLike, count: int = 8) -> tuple[np.ndarray, float]:
    """Up to ``count`` evenly spaced projections ``[k, nv, nu]`` float64 and ``tilt_deg``,
    for the plan phase's look at the data (e.g. whether the sample is isolated) without
    reading a large file whole.

    Raises
    ------
    DataError
        As :func:`stored_projection_shape`; non-finite values; a bad ``tilt_deg``.
    """
    p = Path(path)
    n, _, _ = stored_projection_shape(p)
    from hpc_adept.lamino.region import sample_indices

    picks = sample_indices(n, count)
    with open_h5(p) as f:
        sample = np.asarray(f[PROJECTIONS][picks], dtype=np.float64)
        tilt = read_scalar_attr(f, TILT_ATTR, p)
    if not np.all(np.isfinite(sample)):
        raise data_error(p, "holds NaN or Inf", PROJECTIONS)
    problem = tilt_problem(tilt)
    if problem:
        raise data_error(p, problem, f"@{TILT_ATTR}")
    return sample, float(tilt)
