"""Laminography geometry, forward projector, exact adjoint and filtered backprojection.

Conventions (DESIGN.md section 3): volumes ``[nz, ny, nx]`` with z the rotation axis,
projections ``[n_angles, nv, nu]``; see :mod:`hpc_adept.lamino.geometry`.
"""

from hpc_adept.lamino.fbp import angular_weights, fbp, ramp_filter
from hpc_adept.lamino.geometry import Geometry, GeometryError
from hpc_adept.lamino.projector import MAX_CHUNK_BYTES, backproject, project

__all__ = [
    "MAX_CHUNK_BYTES",
    "Geometry",
    "GeometryError",
    "angular_weights",
    "backproject",
    "fbp",
    "project",
    "ramp_filter",
]
