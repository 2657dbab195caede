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

from hpc_adept.lamino.filters import angular_weights, ramp_filter
from hpc_adept.lamino.geometry import Geometry, GeometryError
from hpc_adept.lamino.operator import (
    KERNELS,
    LaminoOperator,
    backproject,
    check_kernel,
    fbp,
    project,
)
from hpc_adept.lamino.projector import MAX_CHUNK_BYTES

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
]
