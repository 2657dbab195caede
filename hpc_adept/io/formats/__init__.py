"""Readers for data made by other programs (issue 19, "Real data in").

Diffraction data -> list of :class:`~hpc_adept.io.cxi.Scan` (:func:`read_scans`):

``adept-cxi``
    our own CXI dataset (:mod:`hpc_adept.io.cxi`).
``cxi``
    CXI 1.6 files of other programs, e.g. ptychodus (:mod:`.cxi_foreign`).
``foldslice-prepared``
    fold_slice / PtychoShelves ``data_roi<label>_dp.hdf5`` + ``_para.hdf5``
    (:mod:`.foldslice_prepared`).
``ptychodus-diffraction``
    ptychodus ``/dp`` (LZF) or assembled ``/patterns`` files with a product file for the
    positions (:mod:`.ptychodus`).
``lamni-eiger``
    PSI cSAXS / LamNI raw Eiger HDF5 with Orchestra positions and the LamNI angle table,
    cropped around the beam centre (:mod:`.lamni`); APS 31-ID-E LYNX files share it.
``velociprobe``
    APS 33-ID-C Velociprobe master file (external links to its frame files) with its
    position CSV in nanometres (:mod:`.velociprobe`).
``ptychoshelves-prepared``
    PtychoShelves (PSI) prepared ``S%05d_data_%03dx%03d.h5`` (:mod:`.ptychoshelves_prepared`).
``lamni-tomo``
    a raw cSAXS / LamNI tomography as one experiment folder (angle table, per-scan
    position files and Eiger files in the beamline's layout; :mod:`.lamni_tomo`).

Projections made elsewhere -> :class:`~hpc_adept.io.runfiles.ProjectionSet`
(:func:`read_projection_set`): ``ptychoshelves-recons`` (``*_recons.h5``),
``foldslice-niter`` (``Niter*.mat``, MATLAB -v7.3), ``ptychodus-product`` and
``tiff-stack`` (with a text angle file).

:func:`detect_format` names the format of a path (or refuses, listing candidates);
:func:`inspect` summarises a path without running anything; :mod:`.geometry` maps other
codes' angles onto ours; :func:`write_cxi_dataset` writes scans read from any format as our
CXI dataset. Values the files lack (energy, distance, detector pixel,
rotation and laminography angles) are supplied as keyword arguments; the stages take them
from the config's ``data`` section (:mod:`.source`: ``ScanSource`` for ``adept ptycho``,
``read_projections_of`` for projections imported as ``projections.h5``).
"""

from hpc_adept.io.formats._values import Supplied
from hpc_adept.io.formats.convert import write_cxi_dataset
from hpc_adept.io.formats.detect import (
    FORMATS,
    PROJECTION_FORMATS,
    SCAN_FORMATS,
    detect_format,
    inspect,
    read_projection_set,
    read_scans,
)
from hpc_adept.io.formats.geometry import (
    centre_shifts,
    ptychoshelves_vectors,
    tike_vectors,
    to_adept_angles,
    to_adept_laminography,
    tomocupy_vectors,
)
from hpc_adept.io.formats.projections import read_angle_file

__all__ = [
    "FORMATS",
    "PROJECTION_FORMATS",
    "SCAN_FORMATS",
    "Supplied",
    "centre_shifts",
    "detect_format",
    "inspect",
    "ptychoshelves_vectors",
    "read_angle_file",
    "read_projection_set",
    "read_scans",
    "tike_vectors",
    "to_adept_angles",
    "to_adept_laminography",
    "tomocupy_vectors",
    "write_cxi_dataset",
]
