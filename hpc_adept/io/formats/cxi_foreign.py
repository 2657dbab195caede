"""CXI files written by other programs (ptychodus, beamline converters), CXI 1.6 layout.

Paths (the CXI 1.6 spec, and AdvancedPhotonSource/ptychodus 1.7.0 ``plugins/cxi_file.py``,
class ``_P`` and ``CXIDiffractionFileWriter.write``):

- frames ``/entry_1/data_1/data`` (ptychodus: a soft link to
  ``/entry_1/instrument_1/detector_1/data``, written with ``compression='lzf'``);
- ``/entry_1/instrument_1/source_1/energy`` (J), ``.../detector_1/distance`` (m),
  ``x_pixel_size``, ``y_pixel_size`` (m);
- ``.../detector_1/mask``: bit flags (Maia 2012, the CXI pixel mask, as FXIhub's condor
  ``utils/pixelmask.py`` lists them); a pixel is left out when any flag is set but the
  informational ones (in a peak mask, out of resolution limits, artifact or background
  corrected, peak for a hit finder: :data:`MASK_INFO_BITS`), so a writer's own nonzero
  "bad" value stays bad; 2-D ``[ny, nx]``, or 3-D ``[n, ny, nx]`` per frame, then a pixel
  flagged in any frame is left out of all (LSQ-ML takes one detector mask);
- positions ``/entry_1/sample_1/geometry_1/translation`` ``[n, 3]`` (PyNX's
  ``save_ptycho_data_cxi`` writes ``[3, n]``, which its ``runner/cxi.py`` reads as
  ``x, y = translation[0:2]``); legacy ``/entry_1/data_1/translation``. The CXI spec
  defines it as the sample's translation in the lab frame of the detector's
  ``basis_vectors``, so the probe position on the sample is its negative along each axis
  that runs like the frame's, and itself along an axis that runs against it: CDTools
  (``tools/data`` ``add_ptycho_translations`` stores its probe translations negated, with
  the default basis ``[[0, -p, 0], [-p, 0, 0]]``, so its ``translations_to_pixel`` puts
  the probe at ``(T_y, T_x) / pixel``) and PyNX (the same negative basis, probe
  positions stored as they are) both end with the stored value being the probe position
  in the frame's axes; without a basis, +x and +y are taken (the probe at minus the
  translation). ptychodus (``plugins/cxi_file.py`` ``CXIProductFileIO.write``) writes the
  probe position (x_m, y_m, 0) as it is, in its product CXI file (its diffraction CXI file
  has none, so the positions come from a second file). ``translation``
  (``data.cxi_translation``) says which: ``auto`` takes the probe position from a file
  ptychodus wrote (its ``/entry_1/ptychodus`` group or ``/entry_1/process_1/program``) or
  one laid out as our own (our geometry keys), else the sample's translation (with a
  warning when there is no basis); ptychodus's ``probe_position_indexes`` put the rows in
  frame order;
- rotation angle ``/entry_1/ptychodus/tomography_angle_deg`` (non-standard), read in the
  PtychoShelves convention (ptychodus hands it to pyxalign); our own
  ``/entry_1/sample_1/geometry_1/rotation_angle_deg`` and ``laminography_angle_deg`` when
  present (our convention).

Positions are taken as stored, x along frame columns and y along rows (as ptychodus reads
them: ``ProbePosition(idx, translation[i, 0], translation[i, 1])``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from hpc_adept.io.cxi import ELEMENTARY_CHARGE_C, Scan
from hpc_adept.io.formats import ptychodus as _ptychodus
from hpc_adept.io.formats._read import (
    check_shape,
    data_error,
    open_h5,
    optional_number,
    read_array,
    read_frames,
    require_dataset,
)
from hpc_adept.io.formats._values import (
    DETECTOR_PIXEL_M_RANGE,
    DISTANCE_M_RANGE,
    Supplied,
    check_positions_m,
    check_range,
    energy_j_from_ev,
    laminography_deg,
    resolve,
    rotation_deg,
)

__all__ = ["describe_translation", "read_foreign_cxi", "translation_meaning"]

PathLike = str | os.PathLike
log = logging.getLogger(__name__)
_WARNED: set[Path] = set()  # folders told that their translations were read as the sample's

DATA = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
TRANSLATION = ("/entry_1/sample_1/geometry_1/translation", "/entry_1/data_1/translation")
ENERGY = "/entry_1/instrument_1/source_1/energy"
DISTANCE = "/entry_1/instrument_1/detector_1/distance"
X_PIXEL = "/entry_1/instrument_1/detector_1/x_pixel_size"
Y_PIXEL = "/entry_1/instrument_1/detector_1/y_pixel_size"
MASK = "/entry_1/instrument_1/detector_1/mask"
BASIS = "/entry_1/instrument_1/detector_1/basis_vectors"
# CXI pixel-mask flags that say something about a usable pixel: in a peak mask 0x20, out of
# resolution limits 0x100, artifact corrected 0x800, peak for a hit finder 0x2000, photon
# background corrected 0x4000; any other set bit (invalid 0x1, saturated 0x2, hot, dead,
# shadowed, to be ignored, bad, missing, noisy, failed correction, or a writer's own) = bad
MASK_INFO_BITS = 0x20 | 0x100 | 0x800 | 0x2000 | 0x4000
OUR_ROTATION = "/entry_1/sample_1/geometry_1/rotation_angle_deg"
OUR_LAMINOGRAPHY = "/entry_1/sample_1/geometry_1/laminography_angle_deg"
PTYCHODUS_ANGLE = "/entry_1/ptychodus/tomography_angle_deg"
PROGRAM = "/entry_1/process_1/program"
POSITION_INDEXES = "/entry_1/ptychodus/probe_position_indexes"
TRANSLATION_MEANINGS = ("auto", "probe", "sample")


def _first(f: h5py.File, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if f.get(k) is not None), None)


def has_translation(f: h5py.File) -> bool:
    """Whether ``f`` holds a translation table (else the positions are in a second file)."""
    return _first(f, TRANSLATION) is not None


def _holds_probe_positions(f: h5py.File) -> bool:
    """Whether ``f``'s translation is the probe position: ptychodus wrote it (its extras
    group, or its name as the program), or it is laid out as our own CXI files (our
    geometry keys; ``hpc_adept.io.cxi.write_cxi`` stores probe positions)."""
    if isinstance(f.get("/entry_1/ptychodus"), h5py.Group):
        return True
    if f.get(OUR_ROTATION) is not None or f.get(OUR_LAMINOGRAPHY) is not None:
        return True
    program = f.get(PROGRAM)
    if not isinstance(program, h5py.Dataset) or program.shape not in ((), (1,)):
        return False
    value = np.asarray(program[()]).reshape(-1)[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip().lower() == "ptychodus"


def translation_meaning(path: PathLike, translation: str = "auto") -> str:
    """``probe`` or ``sample``: how the positions of ``path`` (a CXI file, or a ptychodus
    product file: always probe positions) are read under the setting ``translation``
    (``auto``: ``probe`` when ptychodus wrote the file)."""
    with open_h5(Path(path)) as f:
        if _ptychodus.is_product(f):  # a ptychodus product .h5: probe positions
            return "probe"
        return _meaning(f, translation)


def describe_translation(path: PathLike, translation: str = "auto") -> str:
    """How the positions of ``path`` are read under ``translation``, in words (for
    ``adept inspect``: the sign is a convention)."""
    if translation_meaning(path, translation) == "probe":
        return "probe positions as stored"
    with open_h5(Path(path)) as f:
        signs = _lab_axis_signs(f, Path(path))
    if signs is None:
        return "the sample's translation: probe position = -translation"
    axes = "".join(f" {'-' if sign > 0 else '+'}{name}" for sign, name in
                   zip(signs[:2], ("x", "y"), strict=True))
    return f"the sample's translation through the detector basis: probe position =" \
           f"{axes} of the translation"


def _meaning(f: h5py.File, translation: str) -> str:
    """``probe`` or ``sample`` for the CXI file ``f`` under the setting ``translation``."""
    if translation not in TRANSLATION_MEANINGS:
        raise ValueError(f"translation must be one of {TRANSLATION_MEANINGS}, got "
                         f"{translation!r}")
    if translation != "auto":
        return translation
    return "probe" if _holds_probe_positions(f) else "sample"


def _written_by_pynx(f: h5py.File) -> bool:
    """PyNX's ``save_ptycho_data_cxi`` (root attribute ``creator``, or
    ``/entry_1/data_1/process_1/program``): its translation table is ``[3, n]``."""
    names = [f.attrs.get("creator")]
    program = f.get("/entry_1/data_1/process_1/program")
    if isinstance(program, h5py.Dataset) and program.shape in ((), (1,)):
        names.append(np.asarray(program[()]).reshape(-1)[0])
    return any((v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
               .strip().lower().startswith("pynx") for v in names if v is not None)


def _translation_table(f: h5py.File, path: Path, key: str, n: int) -> np.ndarray:
    """The ``[n, 3]`` table at ``key``: rows per frame (the CXI spec), or PyNX's ``[3, n]``
    (``xyz = np.zeros((3, x.size))``; its reader takes ``translation[0:2]`` as x, y)."""
    shape = require_dataset(f, key, path).shape
    transposed = (len(shape) == 2 and shape[0] == 3 and shape[1] == n
                  and (n != 3 or _written_by_pynx(f)))
    if not transposed and (len(shape) != 2 or shape[1] not in (2, 3) or shape[0] != n):
        raise data_error(path, f"expected shape ({n}, 3) (one row per frame), got {shape}",
                         key)
    table = read_array(f, key, path, ndim=2, dtype=np.float64)
    table = table.T if transposed else table
    if table.shape[1] == 2:
        table = np.concatenate([table, np.zeros((n, 1))], axis=1)
    return table


def _lab_axis_signs(f: h5py.File, path: Path) -> np.ndarray | None:
    """Signs ``[x, y, z]`` that take the lab frame of ``basis_vectors`` to the frame's
    columns and rows (CDTools and PyNX write both axes negative: ``[[0, -p, 0], [-p, 0,
    0]]``), or None when the file has no basis (then taken as +x, +y)."""
    if f.get(BASIS) is None:
        return None
    basis = read_array(f, BASIS, path, ndim=2, dtype=np.float64)
    basis = basis.T if basis.shape == (2, 3) else basis  # PyNX [2, 3]; CDTools [3, 2]
    if basis.shape != (3, 2):
        raise data_error(path, f"expected [3, 2] or [2, 3], got {basis.shape}", BASIS)
    row_axis, col_axis = basis[:, 0], basis[:, 1]
    if not (abs(col_axis[0]) > abs(col_axis[1]) and abs(row_axis[1]) > abs(row_axis[0])):
        raise data_error(path, "the detector's columns and rows do not run along the lab's x "
                               "and y (not supported): set data.cxi_translation: probe if the "
                               "translations are probe positions along the frame", BASIS)
    return np.array([np.sign(col_axis[0]), np.sign(row_axis[1]), 1.0])


def _translation(f: h5py.File, path: Path, n: int, translation: str = "auto"
                 ) -> np.ndarray | None:
    """``[n, 3]`` probe positions (a 2-column table gets z = 0), or None when absent;
    ``translation``: what the file holds (``probe``, ``sample`` or ``auto``)."""
    key = _first(f, TRANSLATION)
    if key is None:
        return None
    table = _translation_table(f, path, key, n)
    check_positions_m(path, key, table)
    table = _in_frame_order(f, path, table)
    if _meaning(f, translation) == "probe":
        return table
    signs = _lab_axis_signs(f, path)
    if signs is None and translation == "auto":
        _say_sample(path)
    # the sample moves by t in the lab: the probe sits at -t on the sample, in the frame's
    # axes through the detector basis
    return -table * (signs if signs is not None else 1.0)


def _in_frame_order(f: h5py.File, path: Path, table: np.ndarray) -> np.ndarray:
    """Rows in frame order: ptychodus pairs row i with frame ``probe_position_indexes[i]``
    (``CXIProductFileIO._read_positions``); without the indexes, row i is frame i."""
    if f.get(POSITION_INDEXES) is None:
        return table
    indexes = read_array(f, POSITION_INDEXES, path, ndim=1, dtype=np.int64, kind="integer",
                         expected=(len(table),))
    if not np.array_equal(np.sort(indexes), np.arange(len(table))):
        raise data_error(path, f"not a permutation of 0..{len(table) - 1}", POSITION_INDEXES)
    return table[np.argsort(indexes)]


def _say_sample(path: Path) -> None:
    """Warn once per folder that ``auto`` read the translations as the sample's."""
    if path.parent not in _WARNED:
        _WARNED.add(path.parent)
        log.warning("%s: CXI translation read as the sample's (the CXI spec: probe position "
                    "= -translation); set data.cxi_translation: probe if the writer stored "
                    "probe positions", path)


def _positions_from(other: Path, n: int, translation: str) -> np.ndarray:
    """Positions from a second file: a CXI product or a ptychodus product."""
    with open_h5(other) as f:
        if _ptychodus.is_product(f):
            table = None
        else:
            table = _translation(f, other, n, translation)
            if table is None:
                raise data_error(other, f"no positions ({TRANSLATION[0]})")
    if table is None:
        header = _ptychodus.read_product_header(other)
        if len(header.positions_m) != n:
            raise data_error(other, f"{len(header.positions_m)} positions for {n} frames",
                             _ptychodus.POS_X)
        table = header.positions_m[np.argsort(header.indexes)]
    return table


def _energy_j(f: h5py.File, path: Path, s: Supplied) -> float:
    joules = optional_number(f, ENERGY, path, positive=True)
    energy_ev = resolve(path, ENERGY, "energy_ev",
                        None if joules is None else joules / ELEMENTARY_CHARGE_C, s.energy_ev)
    return energy_j_from_ev(path, ENERGY, energy_ev)


def _detector(f: h5py.File, path: Path, s: Supplied) -> tuple[float, float, float]:
    """(distance, x pixel, y pixel), metres, range-checked."""
    distance = resolve(path, DISTANCE, "distance_m",
                       optional_number(f, DISTANCE, path, positive=True), s.distance_m)
    check_range(path, DISTANCE, distance, DISTANCE_M_RANGE, "m")
    pixels = []
    for key in (X_PIXEL, Y_PIXEL):
        value = resolve(path, key, "detector_pixel_m",
                        optional_number(f, key, path, positive=True), s.detector_pixel_m)
        pixels.append(check_range(path, key, value, DETECTOR_PIXEL_M_RANGE, "m"))
    return distance, pixels[0], pixels[1]


def _angles(f: h5py.File, path: Path, s: Supplied, convention: str) -> tuple[float, float]:
    """(theta, L) in our convention from our keys, ptychodus's key or what was supplied."""
    ours = optional_number(f, OUR_ROTATION, path)
    ptychodus = optional_number(f, PTYCHODUS_ANGLE, path)
    if ours is not None:
        theta = resolve(path, OUR_ROTATION, "rotation_angle_deg", ours,
                        None if s.rotation_angle_deg is None
                        else rotation_deg(s.rotation_angle_deg, convention))
    elif s.rotation_angle_deg is not None:  # wins over ptychodus's default 0
        theta = rotation_deg(s.rotation_angle_deg, convention)
    else:
        theta = rotation_deg(resolve(path, PTYCHODUS_ANGLE, "rotation_angle_deg", ptychodus,
                                     None), "ptychoshelves")
    lam_file = optional_number(f, OUR_LAMINOGRAPHY, path)
    if lam_file is not None:
        lam = laminography_deg(path, lam_file, "adept")
        if s.laminography_angle_deg is not None:
            resolve(path, OUR_LAMINOGRAPHY, "laminography_angle_deg", lam,
                    laminography_deg(path, s.laminography_angle_deg, convention))
        return theta, lam
    lam = resolve(path, OUR_LAMINOGRAPHY, "laminography_angle_deg", None,
                  s.laminography_angle_deg)
    return theta, laminography_deg(path, lam, convention)


def _bad_pixels(f: h5py.File, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The detector mask ``[ny, nx]`` bool (True = left out) from the CXI pixel flags,
    2-D or one per frame."""
    ds = require_dataset(f, MASK, path)
    per_frame = len(ds.shape) == 3
    check_shape(ds.shape, 3 if per_frame else 2, path, MASK, shape if per_frame else shape[1:])
    if ds.dtype.kind not in "biu":
        raise data_error(path, f"dtype {ds.dtype} is not integer or boolean", MASK)
    if not per_frame:
        return _unusable(ds[()])
    bad = np.zeros(shape[1:], dtype=bool)
    block = max(1, 2**22 // max(1, shape[1] * shape[2]))  # frames per read: a bounded buffer
    for start in range(0, shape[0], block):
        bad |= _unusable(ds[start:start + block]).any(axis=0)
    return bad


def _unusable(flags: np.ndarray) -> np.ndarray:
    """True where a CXI pixel flag other than an informational one is set."""
    return (np.asarray(flags).astype(np.int64) & ~MASK_INFO_BITS) != 0


def read_foreign_cxi(path: PathLike, positions_path: PathLike | None = None, *,
                     supplied: Supplied | None = None, load_counts: bool = True,
                     angle_convention: str = "adept", translation: str = "auto") -> Scan:
    """Read a CXI file written by another program as a :class:`Scan`.

    Parameters
    ----------
    path : str or os.PathLike
        The CXI file with the frames.
    positions_path : str or os.PathLike, optional
        Where the positions are when ``path`` has none (a ptychodus ``product.cxi`` or a
        ptychodus product ``.h5``).
    supplied : Supplied, optional
        What the file lacks; a supplied rotation angle wins over ptychodus's
        ``tomography_angle_deg`` (written as 0 by default).
    angle_convention : str
        Convention of the supplied angles (default ours).
    translation : {'auto', 'probe', 'sample'}
        What ``translation`` holds (module docstring; ``data.cxi_translation``).
    """
    p = Path(path)
    s = supplied or Supplied()
    with open_h5(p) as f:
        key = _first(f, DATA)
        if key is None:
            raise data_error(p, f"no diffraction data (neither {DATA[0]} nor {DATA[1]})")
        frames, shape = read_frames(f, key, p, load_counts)
        positions = _translation(f, p, shape[0], translation)
        energy_j = _energy_j(f, p, s)
        distance, x_pixel, y_pixel = _detector(f, p, s)
        theta, lam = _angles(f, p, s, angle_convention)
        mask = _bad_pixels(f, p, shape) if f.get(MASK) is not None else None
    if positions is None:
        if positions_path is None:
            raise data_error(p, f"no positions ({TRANSLATION[0]}); give the product file "
                                "that holds them")
        positions = _positions_from(Path(positions_path), shape[0], translation)
    if mask is not None and mask.all():
        raise data_error(p, "every detector pixel is masked", MASK)
    return Scan(counts=frames, positions_m=positions, energy_j=energy_j, distance_m=distance,
                x_pixel_size_m=x_pixel, y_pixel_size_m=y_pixel, rotation_angle_deg=theta,
                laminography_angle_deg=lam, mask=mask, path=str(p), counts_shape=shape)
