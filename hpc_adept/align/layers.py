"""A chip as a stack of layers: the volume prior of the alignment's joint last level.

A planar IC is built layer by layer: between two interfaces of its stack (the top and
bottom of a metal or a via layer) its material does not change with height. A volume
``[nz, ny, nx]`` of such a stack is ``V[z] = sum_k B[k, z] L_k``: one lateral map ``L_k``
per layer and the fixed profiles ``B[k, z]``, the length (voxels) of voxel ``z``'s
height interval ``[z, z + 1)`` inside layer ``k``. Projection matching through a widened
volume of voxels fits misaligned data nearly as well as aligned ones (the material
outside the region, seen by a few angles, follows a shift pattern smooth over the angles);
the layer maps have some ``nz / K`` times fewer unknowns and cannot follow it
(docs/extended_samples.md, "A layered volume").

Heights are voxels along the volume's z axis from the bottom face of its first slice
(index 0); the stack's interfaces come from the user or a LEF technology file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hpc_adept.errors import DataError


def layer_profiles(edges_px: Sequence[float], nz: int, factor: int = 1) -> np.ndarray:
    """Profiles ``B [K, nz / factor]`` of the layers between consecutive interfaces.

    Parameters
    ----------
    edges_px : sequence of float, voxels of full resolution
        Interface heights, strictly increasing. The volume's bottom (0) and top (``nz``)
        are interfaces too; heights outside ``(0, nz)`` are dropped.
    nz : int
        Slices of the volume at full resolution.
    factor : int
        Binning of the level (its slices ``factor`` voxels thick; ``nz`` divisible).

    Returns
    -------
    ndarray, float64, [K, nz // factor]
        ``B[k, z]``: the fraction of binned slice ``z`` inside layer ``k`` (each column
        sums to 1). Layers thinner than no slice are dropped.
    """
    edges = np.asarray(edges_px, np.float64)
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("layer interfaces must be finite and strictly increasing")
    if nz % factor:
        raise ValueError(f"{nz} slices do not bin by {factor}")
    inner = edges[(edges > 0) & (edges < nz)] / factor
    bounds = np.concatenate([[0.0], inner, [nz / factor]])
    bottom = np.arange(nz // factor, dtype=np.float64)
    low = np.maximum(bottom[None, :], bounds[:-1, None])
    high = np.minimum(bottom[None, :] + 1.0, bounds[1:, None])
    return np.clip(high - low, 0.0, None)


class LayeredOperator:
    """``A (m B L)``: layer maps ``[K, ny, nx]`` -> projections through a volume operator.

    Parameters
    ----------
    op : LinearOperator
        Volume ``[nz, ny, nx]`` -> projections.
    profiles : torch.Tensor, [K, nz]
        From :func:`layer_profiles` (on the volume's device and dtype).
    support : torch.Tensor, bool or float, [nz, ny, nx]
        The volume's support mask ``m`` (zero outside).
    """

    def __init__(self, op: object, profiles: torch.Tensor, support: torch.Tensor) -> None:
        self.op = op
        self.profiles = profiles
        self.mask = support
        # least squares of a volume by layers: (B B^T)^-1 B, K x K
        self._pinv = torch.linalg.solve(profiles @ profiles.T, profiles)

    def volume(self, layers: torch.Tensor) -> torch.Tensor:
        """``m B L`` [nz, ny, nx]."""
        return torch.einsum("kz,kyx->zyx", self.profiles, layers) * self.mask

    def layers_of(self, volume: torch.Tensor) -> torch.Tensor:
        """The layer maps ``[K, ny, nx]`` nearest to ``volume`` (least squares per column)."""
        return torch.einsum("kz,zyx->kyx", self._pinv, volume * self.mask)

    def layer_support(self) -> torch.Tensor:
        """bool ``[K, ny, nx]``: the layer columns that reach some supported voxel."""
        return torch.einsum("kz,zyx->kyx", self.profiles, self.mask.to(self.profiles.dtype)) > 0

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        return self.op.forward(self.volume(layers))

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        back = self.op.adjoint(projections) * self.mask
        return torch.einsum("kz,zyx->kyx", self.profiles, back)


def lef_interfaces_um(lef_path: str | Path, base_um: float = 0.0) -> tuple[float, ...]:
    """Interface heights (um, above the volume's bottom face) of a LEF technology's stack.

    Parameters
    ----------
    lef_path : str or Path
        LEF with ``HEIGHT`` and ``THICKNESS`` of its routing layers (the cut layers fill the
        gaps between them, :func:`hpc_adept.phantom.layout.layer_z_ranges`).
    base_um : float, um
        Height above the substrate of the volume's bottom face.

    Raises
    ------
    DataError
        The file is missing, unreadable, or gives no layer heights.
    """
    from hpc_adept.phantom.layout import layer_z_ranges
    from hpc_adept.phantom.lef import read_lef

    path = Path(lef_path)
    if not path.is_file():
        raise DataError(f"align.layer_lef: {path} is not a file")
    ranges = layer_z_ranges(read_lef(path))
    heights = sorted({h for span in ranges.values() for h in span})
    if not heights:
        raise DataError(f"align.layer_lef: {path} gives no layer heights (HEIGHT, THICKNESS)")
    return tuple(float(h) - base_um for h in heights)
