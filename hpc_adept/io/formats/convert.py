"""Write scans read from another format as our CXI dataset (DESIGN section 4).

The simplest way to run ``adept`` on foreign data: read it once
(:func:`hpc_adept.io.formats.read_scans`) and write one CXI file per rotation angle; the
rest of the pipeline then reads the directory as it reads a simulated dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hpc_adept.io.cxi import Scan, read_cxi, write_cxi
from hpc_adept.io.formats._read import data_error

__all__ = ["write_cxi_dataset"]

PathLike = str | os.PathLike


def write_cxi_dataset(scans: Sequence[Scan], directory: PathLike) -> list[Path]:
    """Write ``scans`` as ``scan_0000.cxi``, ... (ordered as given), each atomically.

    Header-only scans (``counts`` None) are read again with their counts from their own
    path only when that path is one of our CXI files; otherwise they are refused.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    DataError
        When a scan has no counts or the directory already holds ``*.cxi`` files.
    """
    out = Path(directory)
    if out.is_dir() and any(out.glob("*.cxi")):
        raise data_error(out, "already holds *.cxi files; choose an empty directory")
    written = []
    for index, scan in enumerate(scans):
        if scan.counts is None:
            if scan.path is None or not str(scan.path).endswith(".cxi"):
                raise data_error(scan.path or out, "header-only scan: read it with "
                                                   "load_counts=True before converting")
            scan = read_cxi(scan.path)
        target = out / f"scan_{index:04d}.cxi"
        write_cxi(target, scan)
        written.append(target)
    return written
