"""Scan positions from a spec data file (cSAXS step scans): the motor columns of one scan.

fold_slice ``+scans/+positions/spec.m`` (``p.src_positions = 'spec'``) reads the scan's
block of the beamline's spec file (``io.spec_read(p.specfile, 'ScanNr', scan)``) and takes
``positions_real = [py * 1e-6, px * 1e-6]``: the fine motors ``p.spec.motor.fine_motors``
(default ``py``, ``px``) scaled by ``fine_motors_scale`` (default ``[1e-6 1e-6]``: the motors
read micrometres), one row per frame in frame order; ``+core/ptycho_adjust_positions.m``
then negates them as it does the Orchestra positions, so here ``(x, y) = -(px, py) * 1e-6``
like :func:`hpc_adept.io.formats.lamni.read_lamni_positions`. Continuous line scans
(``cont_line`` in the ``#S`` line) have no motor column per frame (``spec.m`` rebuilds them
from the command) and are refused.

The spec file format (certif.com's spec manual, "Standard Data File Format"): ``#S n
command`` opens scan ``n``; ``#L`` names its columns, separated by two spaces (a name may
hold one space); data lines follow, numbers separated by spaces; other ``#`` lines
(``#C`` comments, ``#P`` motor positions) may appear anywhere, and so may ``@A`` MCA
spectra (continued over lines ending in a backslash), skipped. A scan number repeated in
the file (spec restarted its numbering): the last block, with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from hpc_adept.config import DataConfig
from hpc_adept.io.formats._read import data_error
from hpc_adept.io.formats._values import check_positions_m

__all__ = ["DEFAULT_MOTORS", "is_spec_file", "read_spec_positions"]

log = logging.getLogger(__name__)

#: fold_slice's default fine motors, x then y (``spec.m`` lists them y first); the home of
#: the default is ``data.spec_motors``.
DEFAULT_MOTORS: tuple[str, str] = DataConfig.spec_motors
#: micrometres to metres (``fine_motors_scale``).
MOTOR_SCALE_M = 1e-6


def is_spec_file(path: Path) -> bool:
    """Whether ``path`` reads as a spec data file (a ``#F``, ``#E`` or ``#S`` line first)."""
    try:
        with open(path, errors="replace") as text:
            for line in text:
                if line.strip():
                    return re.match(r"#[FES] ", line) is not None
    except OSError:
        return False
    return False


def _scan_block(p: Path, lines: list[str], scan_number: int) -> tuple[str, list[str]]:
    """The ``#S`` line and the following lines (up to the next ``#S``) of the last block of
    ``scan_number``."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("#S ")]
    mine = [i for i in starts if _scan_number_of(lines[i]) == scan_number]
    if not mine:
        raise data_error(p, f"no scan {scan_number} (#S line) in the spec file")
    if len(mine) > 1:
        log.warning("%s: scan %d appears %d times: the last one is read", p, scan_number,
                    len(mine))
    first = mine[-1]
    end = next((i for i in starts if i > first), len(lines))
    return lines[first], lines[first + 1:end]


def _scan_number_of(line: str) -> int | None:
    """The scan number of a ``#S`` line, or None."""
    fields = line.split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _motor_columns(p: Path, block: list[str], motors: tuple[str, str],
                   scan_number: int) -> tuple[list[str], tuple[int, int]]:
    """The block's ``#L`` labels and the columns of the two motors."""
    label_line = next((ln for ln in block if ln.startswith("#L ")), None)
    if label_line is None:
        raise data_error(p, f"scan {scan_number} has no #L line (column names)")
    labels = re.split(r"\s{2,}|\t", label_line[3:].strip())
    missing = [m for m in motors if m not in labels]
    if missing:
        raise data_error(p, f"scan {scan_number} has no column {', '.join(missing)} (columns: "
                            f"{', '.join(labels)[:200]}); set data.spec_motors")
    return labels, (labels.index(motors[0]), labels.index(motors[1]))


def _data_lines(block: list[str]) -> list[str]:
    """The data lines of a scan block: no blank, ``#`` or ``@`` (MCA) line, nor the
    continuation lines of an ``@`` line (after a trailing backslash)."""
    lines, continued = [], False
    for line in block:
        text = line.rstrip()
        if continued or text.startswith("@"):
            continued = text.endswith("\\")
            continue
        if text and not text.startswith("#"):
            lines.append(text)
    return lines


def read_spec_positions(path: Path, scan_number: int,
                        motors: tuple[str, str] = DEFAULT_MOTORS
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Frame indexes ``[n]`` (0..n-1) and positions ``[n, 3]`` metres of scan
    ``scan_number`` of a spec data file, ``(x, y, 0) = -(motors[0], motors[1]) * 1e-6``.

    DataError (one line) for a missing scan or column, a continuous scan, a short row, a
    non-number, no rows, or positions that are not finite or too large.
    """
    p = Path(path)
    lines = [ln.rstrip("\n") for ln in p.read_text(errors="replace").splitlines()]
    header, block = _scan_block(p, lines, scan_number)
    if "cont_line" in header:
        raise data_error(p, f"scan {scan_number} is a continuous line scan ({header[:60]!r}): "
                            f"its positions are not in the file")
    labels, (x_col, y_col) = _motor_columns(p, block, motors, scan_number)
    rows = []
    for line in _data_lines(block):
        fields = line.split()
        if len(fields) != len(labels):
            raise data_error(p, f"scan {scan_number}: a row of {len(fields)} values under "
                                f"{len(labels)} columns: {line[:60]!r}")
        try:
            rows.append((float(fields[x_col]), float(fields[y_col])))
        except ValueError:
            raise data_error(p, f"scan {scan_number}: not a number in {line[:60]!r}") from None
    if not rows:
        raise data_error(p, f"scan {scan_number} has no data rows")
    xy = -np.array(rows, dtype=np.float64) * MOTOR_SCALE_M
    positions = np.column_stack([xy, np.zeros(len(xy))])
    check_positions_m(p, "positions", positions)
    return np.arange(len(xy), dtype=np.int64), positions
