"""Which detector pixels a widened volume explains in full.

A region reconstructed inside a wide slab is given a lateral margin (see
:mod:`hpc_adept.lamino.region`). A ray that crosses the slab's whole thickness inside the
widened volume is fully modelled; one that leaves it through a side face also crossed
material the model does not hold, and would force that material into the volume. MPI-free.
"""

from __future__ import annotations

import math

import torch

from hpc_adept.lamino.geometry import Geometry

__all__ = ["full_path_mask"]


def full_path_mask(geometry: Geometry, kernel: str = "torch", tolerance_px: float = 1.0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """1 where the ray of a detector pixel runs through the whole slab inside the volume.

    The projection of a volume of ones is the ray's path length inside the volume; a ray
    that crosses the full thickness ``nz`` has the path ``nz / sin(a)`` (``a = 90 - L``).

    Parameters
    ----------
    geometry : Geometry
        The widened volume's geometry.
    kernel : {'torch', 'triton'}
        Projector kernel (``runtime.projector``).
    tolerance_px : float
        Path length (voxels) that a ray may miss to count as full (interpolation at the
        faces).
    device : torch.device or str
        Where to project.

    Returns
    -------
    torch.Tensor, float32, [n_angles, nv, nu], on ``device``
        0/1 weights.
    """
    from hpc_adept.lamino.operator import LaminoOperator

    nz = geometry.volume_shape[0]
    sin_a = abs(math.sin(math.radians(90.0 - geometry.tilt_deg)))
    full = nz / max(sin_a, 1e-6)
    ones = torch.ones(geometry.volume_shape, dtype=torch.float32, device=device)
    with torch.no_grad():
        path = LaminoOperator(geometry, kernel=kernel).forward(ones)
    return (path >= full - tolerance_px).to(torch.float32)
