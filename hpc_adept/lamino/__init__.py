"""Laminography: geometry, the projection operator (forward, exact adjoint) and FBP.

Conventions (DESIGN.md section 3): volumes ``[nz, ny, nx]`` with z the rotation axis,
projections ``[n_angles, nv, nu]``; see :mod:`hpc_adept.lamino.geometry`.

:class:`LaminoOperator` (:mod:`~hpc_adept.lamino.operator`) is the operator of one
geometry and kernel (``torch``, :mod:`~hpc_adept.lamino.projector`; or ``triton``,
:mod:`~hpc_adept.lamino.fused`); both kernels share the oblique projection tables of
:mod:`~hpc_adept.lamino.oblique`, and FBP's filter and weights are in
:mod:`~hpc_adept.lamino.filters`. :func:`project`, :func:`backproject` and :func:`fbp`
are its one-call forms (kernel ``torch`` unless named). The angles shared between MPI
ranks: :class:`hpc_adept.parallel.DistributedLaminoOperator`, the same type.
"""

from hpc_adept.lamino.geometry import Geometry, GeometryError, tilt_problem

# The torch-backed names load on first use: the config and the file readers use the
# geometry's rules without paying for torch (adept report, config errors stay fast).
_LAZY = {
    "angular_weights": "filters",
    "ramp_filter": "filters",
    "KERNELS": "operator",
    "LaminoOperator": "operator",
    "backproject": "operator",
    "check_kernel": "operator",
    "fbp": "operator",
    "project": "operator",
    "MAX_CHUNK_BYTES": "projector",
}

__all__ = [
    "KERNELS",
    "MAX_CHUNK_BYTES",
    "Geometry",
    "GeometryError",
    "LaminoOperator",
    "angular_weights",
    "backproject",
    "check_kernel",
    "fbp",
    "project",
    "ramp_filter",
    "tilt_problem",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
