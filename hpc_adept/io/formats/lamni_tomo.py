"""A raw cSAXS / LamNI tomography given as one folder: every scan of the angle table.

The beamline's layout, under the experiment folder ``ROOT`` (``data.path``):

- angle table ``ROOT/specES1/dat-files/tomography_scannumbers.txt`` (PSI: fold_slice
  ``tomo/tests/test_tomo_real_data.m`` lines 53 and 134, ``par0.OMNY_angle_file``) or
  ``ROOT/dat-files/tomography_scannumbers.txt`` (APS 31-ID-E: ptychodus
  ``plugins/workflow.py`` ``APS31IDEFileBasedWorkflow.execute``, lines 104-107, with
  ``experiment_dir = file_path.parents[3]``); rows as read by
  :func:`~hpc_adept.io.formats.lamni.read_angle_table`;
- positions ``<spec>/scan_positions/scan_%05d.dat`` beside ``dat-files`` (fold_slice
  ``tomo/tests/test_tomo_real_data.m`` line 52 ``par0.omnyposfile``; ptypy
  ``ptypy/experiment/cSAXS.py`` ``get_position_path``: ``'%(base_path)s/specES1/
  scan_positions/' + 'scan_%(scan_number)05d.dat'``; ptychodus ``workflow.py`` line 106),
  read by :func:`~hpc_adept.io.formats.lamni.read_lamni_positions`;
- frames ``ROOT/eiger_4/S%05d-%05d/S%05d/*.h5`` (legacy ``eigeromny/``): fold_slice
  ``ptycho/+detector/+eiger1p5M/eiger1p5M.m`` (``det.basepath_dir = 'eiger_4/'``, else
  ``'eigeromny/'``; ``det.read_path = @utils.compile_x12sa_dirname``),
  ``+utils/compile_x12sa_dirname.m`` (``sprintf('S%05d-%05d/S%05d/', floor(n/1000)*1000,
  floor(n/1000)*1000 + 999, n)``), ``ptycho/+detector/+prep_data/get_dir_path.m``
  (``raw_data_path`` + ``basepath_dir`` + ``read_path(scan)``), and
  ``ptycho/+scans/get_filenames_cSAXS.m`` (no filename pattern: every ``*.h5`` of that
  folder; ``+eiger1p5M/convert2hdf5.m`` makes one ``run_*.h5`` per scan). A scan folder
  with several ``.h5`` files must name one ``*master*``: the DECTRIS master file, whose
  frames are read from the data files it links (:mod:`.dectris`).

Each scan is then read by :func:`~hpc_adept.io.formats.lamni.read_eiger_scan` with its
rotation angle from the table (encoder angle, PtychoShelves convention). The scans are
the table's (a repeated scan number: its last row), optionally restricted to
``scan_range`` (first, last scan number, inclusive) and thinned to every
``scan_step``-th, in scan-number order. A scan of the selection whose frames or
positions are missing is an error naming the file (and ``data.scan_range``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpc_adept.io.cxi import Scan
from hpc_adept.io.formats._read import data_error
from hpc_adept.io.formats._values import Supplied
from hpc_adept.io.formats.lamni import ScanRecord, read_angle_table, read_eiger_scan

__all__ = ["TABLE_NAME", "TomoLayout", "describe", "find_layout", "is_tomo_folder",
           "read_tomo_scans", "selected_scans"]

PathLike = str | os.PathLike

TABLE_NAME = "tomography_scannumbers.txt"
_SPEC_DIRS = ("specES1", ".")  # PSI, then APS 31-ID-E
_DETECTOR_DIRS = ("eiger_4", "eigeromny")


@dataclass(frozen=True)
class TomoLayout:
    """Where a tomography folder keeps its files.

    Attributes
    ----------
    root : pathlib.Path
        The experiment folder (holds ``eiger_4/``).
    spec : pathlib.Path
        The folder holding ``dat-files/`` and ``scan_positions/``.
    table : pathlib.Path
        ``tomography_scannumbers.txt``.
    """

    root: Path
    spec: Path
    table: Path

    def positions(self, scan_no: int) -> Path:
        """``scan_positions/scan_%05d.dat`` of scan ``scan_no``."""
        return self.spec / "scan_positions" / f"scan_{scan_no:05d}.dat"

    def frames(self, scan_no: int) -> Path:
        """The Eiger file of scan ``scan_no``; DataError when none or several."""
        low = scan_no // 1000 * 1000
        folder = f"S{low:05d}-{low + 999:05d}/S{scan_no:05d}"
        for name in _DETECTOR_DIRS:
            candidates = sorted((self.root / name / folder).glob("*.h5"))
            if len(candidates) > 1:
                candidates = [c for c in candidates if "master" in c.name] or candidates
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                raise data_error(self.root / name / folder, f"{len(candidates)} .h5 files "
                                 f"and none named *master*: which holds scan {scan_no}?")
        raise data_error(self.root / _DETECTOR_DIRS[0] / folder,
                         f"no Eiger .h5 file of scan {scan_no} (nor under "
                         f"{_DETECTOR_DIRS[1]}/); restrict the scans with data.scan_range")


def _table_in(path: Path) -> Path | None:
    for spec in _SPEC_DIRS:
        table = path / spec / "dat-files" / TABLE_NAME
        if table.is_file():
            return table
    return None


def is_tomo_folder(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding the angle table where the beamline keeps it."""
    p = Path(path)
    return p.is_dir() and _table_in(p) is not None


def find_layout(path: PathLike, angle_table_path: PathLike | None = None) -> TomoLayout:
    """The layout of the tomography folder ``path`` (``angle_table_path`` overrides the
    table found there); DataError when there is no table."""
    root = Path(path)
    if not root.is_dir():
        raise data_error(root, "not a folder (a LamNI tomography is the experiment folder "
                               "holding specES1/ and eiger_4/)")
    table = Path(angle_table_path) if angle_table_path is not None else _table_in(root)
    if table is None:
        raise data_error(root, f"no specES1/dat-files/{TABLE_NAME} (nor dat-files/"
                               f"{TABLE_NAME}); set data.angle_table_path")
    spec = root / "specES1" if (root / "specES1").is_dir() else root
    return TomoLayout(root=root, spec=spec, table=table)


def selected_scans(table: dict[int, ScanRecord], scan_range: tuple[int, int] | None,
                   scan_step: int, where: Path) -> list[ScanRecord]:
    """The table's records in scan-number order, within ``scan_range``, every
    ``scan_step``-th; DataError when none remains."""
    if scan_step < 1:
        raise data_error(where, f"scan_step must be >= 1, got {scan_step}")
    numbers = sorted(table)
    if scan_range is not None:
        first, last = int(scan_range[0]), int(scan_range[1])
        numbers = [n for n in numbers if first <= n <= last]
    numbers = numbers[::scan_step]
    if not numbers:
        raise data_error(where, f"no scan of the table lies in data.scan_range {scan_range}")
    return [table[n] for n in numbers]


def read_tomo_scans(path: PathLike, *, roi_px: int | None,
                    beam_center_rc: tuple[float, float] | None = None,
                    angle_table_path: PathLike | None = None,
                    scan_range: tuple[int, int] | None = None, scan_step: int = 1,
                    supplied: Supplied | None = None, load_counts: bool = True,
                    angle_convention: str = "ptychoshelves",
                    member: PathLike | None = None, burst_frames: int = 1) -> list[Scan]:
    """Every selected scan of the tomography folder ``path``, in scan-number order.

    Parameters
    ----------
    path : path
        The experiment folder (see the module docstring).
    roi_px : int
        Side of the square crop around the beam centre, pixels (required).
    beam_center_rc : (float, float), optional
        Beam centre (row, col) when the Eiger files have none.
    angle_table_path : path, optional
        Another ``tomography_scannumbers.txt`` than the folder's.
    scan_range : (int, int), optional
        First and last scan number (inclusive) to read.
    scan_step : int
        Read every ``scan_step``-th scan of the selection.
    supplied : Supplied, optional
        What the files lack (the laminography angle always); a supplied rotation angle is
        refused: the table gives them.
    member : path, optional
        Read only the scan whose Eiger file this is.
    burst_frames : int
        Frames per scan point, summed into one.
    """
    layout = find_layout(path, angle_table_path)
    s = supplied or Supplied()
    if roi_px is None:
        raise data_error(layout.root, "a raw Eiger tomography needs data.roi_px (the side "
                                      "of the square crop around the beam centre)")
    if s.rotation_angle_deg is not None:
        raise data_error(layout.table, "the table gives the rotation angles: remove "
                                       "data.rotation_angles_deg / data.angles_path")
    records = selected_scans(read_angle_table(layout.table), scan_range, scan_step,
                             layout.table)
    pairs = [(record, layout.frames(record.scan_no)) for record in records]
    if member is not None:
        wanted = Path(member).resolve()
        pairs = [(r, f) for r, f in pairs if f.resolve() == wanted]
        if not pairs:
            raise data_error(layout.root, f"{member} is no longer one of the data set's files")
    scans = []
    for record, frames in pairs:
        values = dict(s.__dict__, rotation_angle_deg=record.encoder_angle_deg)
        scans.append(read_eiger_scan(frames, layout.positions(record.scan_no), roi_px=roi_px,
                                     beam_center_rc=beam_center_rc,
                                     supplied=Supplied(**values), load_counts=load_counts,
                                     angle_convention=angle_convention,
                                     burst_frames=burst_frames))
    return scans


def describe(path: PathLike, angle_table_path: PathLike | None = None,
             scan_range: tuple[int, int] | None = None, scan_step: int = 1) -> list[str]:
    """Lines for ``adept inspect``: the table and the scan numbers selected from it."""
    layout = find_layout(path, angle_table_path)
    table = read_angle_table(layout.table)
    chosen = selected_scans(table, scan_range, scan_step, layout.table)
    return [f"angle table: {layout.table}",
            f"scan numbers: {chosen[0].scan_no}..{chosen[-1].scan_no} ({len(chosen)} of the "
            f"table's {len(table)})"]
