"""Where the stages read their input: the ``data`` section mapped onto the readers.

:class:`ScanSource` is the diffraction data set of ``data.path`` in any diffraction format:
``headers()`` lists its scans without their frames (``adept ptycho``'s plan),
``load(scan)`` reads one scan's counts (each rank, per scan) and ``check(scan)`` validates
them before any work. Our own CXI dataset keeps its bounded-memory count check and reads.
:func:`read_projections_of` reads a data set in a projection format (``adept ptycho``
then only imports it). :func:`reader_options` maps the ``data`` keys onto the keyword
arguments of :func:`~hpc_adept.io.formats.read_scans` (and of ``inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_adept.errors import ConfigError
from hpc_adept.io.cxi import Scan, check_counts, list_dataset, read_cxi
from hpc_adept.io.formats._read import data_error
from hpc_adept.io.formats.detect import (
    PROJECTION_FORMATS,
    detect_format,
    read_projection_set,
    read_scans,
)
from hpc_adept.io.formats.projections import read_angle_file

if TYPE_CHECKING:
    from hpc_adept.config import DataConfig
    from hpc_adept.io.runfiles import ProjectionSet

__all__ = ["ScanSource", "check_unused", "data_format", "inspect_options", "read_projections_of",
           "reader_options"]

# data.* keys that are the readers' supplied values (``Supplied``) under the same name
SUPPLIED_KEYS = ("energy_ev", "distance_m", "detector_pixel_m", "laminography_angle_deg")


def data_format(data: DataConfig) -> str:
    """``data.format``, detected from ``data.path`` when ``auto`` (DataError if ambiguous).

    Raises
    ------
    ConfigError
        When ``data.path`` is not set or does not exist.
    """
    if data.path is None:
        raise ConfigError("data.path is not set")
    path = Path(data.path)
    if not path.exists():
        raise ConfigError(f"data.path: directory not found: {path}")
    if data.format != "auto":
        return data.format
    # a folder of nothing readable: our CXI reader says what is wrong with it (an
    # interrupted adept simulate, damaged files)
    return detect_format(path, default="adept-cxi")


def _angles(data: DataConfig) -> list[float] | None:
    if data.angles_path is not None:
        return [float(a) for a in read_angle_file(data.angles_path)]
    return None if data.rotation_angles_deg is None else list(data.rotation_angles_deg)


def reader_options(data: DataConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`read_scans` from the ``data`` section (None = unset)."""
    options: dict[str, Any] = {
        "positions_path": data.positions_path,
        "rotation_angles_deg": _angles(data),
        "angle_convention": data.angle_convention,
        "foldslice_orientation": tuple(data.foldslice_orientation),
        "roi_label": data.roi_label,
        "cxi_translation": data.cxi_translation,
        "spec_motors": tuple(data.spec_motors),
        "roi_px": data.roi_px,
        "beam_center_rc": data.beam_center_rc,
        "angle_table_path": data.angle_table_path,
        "scan_range": data.scan_range,
        "scan_step": data.scan_step,
        "burst_frames": data.burst_frames,
    }
    options.update({k: getattr(data, k) for k in SUPPLIED_KEYS})
    return options


def inspect_options(data: DataConfig, path: str | Path, fmt: str | None) -> dict[str, Any]:
    """Keyword arguments of :func:`~hpc_adept.io.formats.inspect` for ``path`` from the
    ``data`` section (only the values it sets)."""
    fmt = fmt or detect_format(path)
    if fmt in PROJECTION_FORMATS:
        options = {"laminography_angle_deg": data.laminography_angle_deg,
                   "angles_deg": data.rotation_angles_deg, "angles_path": data.angles_path,
                   "pixel_size_m": data.pixel_size_m,
                   "angle_convention": data.angle_convention}
    else:
        options = reader_options(data)
    return {k: v for k, v in options.items() if v is not None}


@dataclass(frozen=True)
class ScanSource:
    """A diffraction data set: its path, format and the reader's options.

    Attributes
    ----------
    path : pathlib.Path
        ``data.path`` (file or directory).
    fmt : str
        One of :data:`~hpc_adept.io.formats.SCAN_FORMATS`.
    options : dict
        Keyword arguments of :func:`read_scans` (:func:`reader_options`).
    """

    path: Path
    fmt: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        """Whether the data set is our own CXI dataset directory."""
        return self.fmt == "adept-cxi" and self.path.is_dir()

    def headers(self) -> list[Scan]:
        """Header-only scans (``counts`` None, ``path`` = their file), by rotation angle."""
        if self.ours:
            return list_dataset(self.path)
        scans = read_scans(self.path, self.fmt, load_counts=False, **self.options)
        _check_alike(self.path, scans)
        return scans

    def load(self, scan: Scan) -> Scan:
        """``scan`` (from :meth:`headers`) read again with its counts."""
        if self.ours or self.fmt == "adept-cxi":
            return read_cxi(scan.path)
        return read_scans(self.path, self.fmt, member=scan.path, **self.options)[0]

    def check(self, scan: Scan) -> None:
        """DataError when ``scan``'s counts are unreadable, non-finite or negative."""
        if self.ours or self.fmt == "adept-cxi":
            check_counts(scan.path)
        else:
            self.load(scan)  # the readers check shape, dtype, finiteness and sign


def _check_alike(where: Path, scans: list[Scan]) -> None:
    """DataError when the scans disagree in frame shape, energy or laminography angle."""
    first = scans[0]
    for scan in scans[1:]:
        for name in ("frame_shape", "energy_ev", "laminography_angle_deg"):
            a, b = getattr(first, name), getattr(scan, name)
            if a != b and not (isinstance(a, float) and abs(a - b) <= 1e-6 * abs(a)):
                raise data_error(where, f"{Path(scan.path).name}: {name} {b} differs from "
                                        f"{a} of {Path(first.path).name}")


def check_unused(data: DataConfig, fmt: str) -> None:
    """ConfigError when ``data`` supplies values our own CXI dataset records (they would
    be ignored silently)."""
    if fmt != "adept-cxi":
        return
    for key in (*SUPPLIED_KEYS, "rotation_angles_deg", "angles_path", "positions_path"):
        if getattr(data, key) is not None:
            raise ConfigError(f"data.{key}: our CXI files record it (data.format "
                              f"adept-cxi); remove the key")


def read_projections_of(data: DataConfig, fmt: str) -> ProjectionSet:
    """The projections of ``data.path`` in projection format ``fmt`` (our conventions).

    Raises
    ------
    ConfigError
        When ``data.laminography_angle_deg`` is not set (no projection file records it).
    """
    if data.laminography_angle_deg is None:
        raise ConfigError(f"data.laminography_angle_deg is not set: {fmt} files do not record "
                          f"the laminography angle")
    return read_projection_set(
        data.path, fmt, laminography_angle_deg=data.laminography_angle_deg,  # type: ignore[arg-type]
        angles_deg=data.rotation_angles_deg, angles_path=data.angles_path,
        pixel_size_m=data.pixel_size_m, angle_convention=data.angle_convention,
        phase_sign=data.phase_sign)
