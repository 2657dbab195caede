"""Data I/O: CXI datasets, run-directory HDF5 files and atomic writes (DESIGN section 4).

Every writer is atomic (a file that exists is complete) and reproducible (the same
content gives a byte-identical file); every reader treats its file as untrusted and
raises a one-line :class:`~hpc_adept.errors.DataError` naming the file and dataset.
"""

from hpc_adept.io.atomic import (
    atomic_output,
    write_h5_atomic,
    write_json_atomic,
    write_text_atomic,
)
from hpc_adept.io.cxi import Scan, check_counts, list_dataset, read_cxi, write_cxi
from hpc_adept.io.runfiles import (
    CircuitTruth,
    GroundTruth,
    ProjectionSet,
    read_ground_truth,
    read_projections,
    read_volume,
    write_ground_truth,
    write_projections,
    write_volume,
)

__all__ = [
    "CircuitTruth",
    "GroundTruth",
    "ProjectionSet",
    "Scan",
    "atomic_output",
    "check_counts",
    "list_dataset",
    "read_cxi",
    "read_ground_truth",
    "read_projections",
    "read_volume",
    "write_cxi",
    "write_ground_truth",
    "write_h5_atomic",
    "write_json_atomic",
    "write_projections",
    "write_text_atomic",
    "write_volume",
]
