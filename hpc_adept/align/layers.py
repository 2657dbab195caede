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


def layer_profiles(edges_px: Sequence[float], nz: int, level_nz: int | None = None
                   ) -> np.ndarray:
    """Profiles ``B [K, level_nz]`` of the layers between consecutive interfaces.

    Parameters
    ----------
    edges_px : sequence of float, voxels of full resolution
        Interface heights, strictly increasing. The volume's bottom (0) and top (``nz``)
        are interfaces too; heights outside ``(0, nz)`` are dropped.
    nz : int
        Slices of the volume at full resolution.
    level_nz : int, optional
        Slices of the level's volume (binned: ``nz`` over the binning, rounded); the
        heights are scaled by ``level_nz / nz``. Default ``nz``.

    Returns
    -------
    ndarray, float64, [K, level_nz]
        ``B[k, z]``: the fraction of slice ``z`` inside layer ``k`` (each column sums to
        1). ``K`` is one more than the interfaces inside the volume.
    """
    edges = np.asarray(edges_px, np.float64)
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("layer interfaces must be finite and strictly increasing")
    level_nz = nz if level_nz is None else level_nz
    scale = level_nz / nz
    inner = edges[(edges > 0) & (edges < nz)] * scale
    bounds = np.concatenate([[0.0], inner, [float(level_nz)]])
    bottom = np.arange(level_nz, dtype=np.float64)
    low = np.maximum(bottom[None, :], bounds[:-1, None])
    high = np.minimum(bottom[None, :] + 1.0, bounds[1:, None])
    return np.clip(high - low, 0.0, None)


class LayeredOperator:
    """``A (m B^T L)``: layer maps ``[K, ny, nx]`` -> projections through a volume operator.

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
        # least squares of a column by layers; a pseudo-inverse, as two layers inside one
        # slice have proportional profiles
        self._pinv = torch.linalg.pinv(profiles.T)

    def volume(self, layers: torch.Tensor) -> torch.Tensor:
        """``m B^T L`` [nz, ny, nx]."""
        return torch.einsum("kz,kyx->zyx", self.profiles, layers) * self.mask

    def layers_of(self, volume: torch.Tensor) -> torch.Tensor:
        """The layer maps ``[K, ny, nx]`` nearest to ``volume`` (least squares per column;
        of the masked column, which is the masked least squares where a column's support
        is whole or empty, as on a widened level)."""
        return torch.einsum("kz,zyx->kyx", self._pinv, volume * self.mask)

    def layer_support(self) -> torch.Tensor:
        """bool ``[K, ny, nx]``: the layer columns that reach some supported voxel."""
        return torch.einsum("kz,zyx->kyx", self.profiles, self.mask.to(self.profiles.dtype)) > 0

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        """Layer maps ``[K, ny, nx]`` -> projections."""
        return self.op.forward(self.volume(layers))

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """Projections -> layer maps ``[K, ny, nx]`` (the exact adjoint of ``forward``)."""
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

    Returns
    -------
    tuple of float, um
        The routing layers' bottoms and tops, increasing, less ``base_um``.

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
