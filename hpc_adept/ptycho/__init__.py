"""Ptychography kernels: the LSQ-ML engine, initial probes and phase-projection extraction.

The engine's settings are the ``ptycho`` config section (:class:`hpc_adept.config.PtychoConfig`).

Array-module generic (NumPy on the host, CuPy on a GPU); no MPI, no files.
"""

from hpc_adept.ptycho.fitted_probe import probe_from_scan
from hpc_adept.ptycho.lsqml import (
    LsqmlResult,
    ObjectGrid,
    make_object_grid,
    optimal_steps,
    reconstruct,
    solve_step_system,
)
from hpc_adept.ptycho.phase import phase_projection, unwrap_phase
from hpc_adept.ptycho.probe import add_probe_modes, orthogonalize_modes, probe_from_data

__all__ = [
    "LsqmlResult",
    "ObjectGrid",
    "add_probe_modes",
    "make_object_grid",
    "optimal_steps",
    "orthogonalize_modes",
    "phase_projection",
    "probe_from_data",
    "probe_from_scan",
    "reconstruct",
    "solve_step_system",
    "unwrap_phase",
]
