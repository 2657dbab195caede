"""The chip outside a region: free voxels around the network's volume.

For an extended sample the reconstructed volume is the region widened by a lateral margin
(:mod:`hpc_adept.lamino.region`) as wide as the rays that cross the region reach. Running
the DIP network over all of it costs as much as the widened volume; most of that margin is
there only to hold what the rays crossed outside the region. :class:`OutsideVoxels` keeps
the network on the region plus an inner band and represents the rest of the margin by free
voxels (one parameter each, trained with the same optimiser and TV), so the network's cost
stays near the region's. MPI-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OutsideVoxels"]


class OutsideVoxels(nn.Module):
    """A network's volume framed by free voxels.

    Parameters
    ----------
    inner : nn.Module
        Maps its input to the inner volume ``[nz, ny - 2 b, nx - 2 b]``.
    shape : (nz, ny, nx)
        The widened volume.
    band_px : int
        Free-voxel frame width ``b`` on each lateral side, voxels.

    The output is ``[nz, ny, nx]``: the inner volume in the middle, the free voxels
    (initially 0) around it.
    """

    def __init__(self, inner: nn.Module, shape: tuple[int, int, int], band_px: int) -> None:
        super().__init__()
        nz, ny, nx = shape
        if band_px < 0 or 2 * band_px >= min(ny, nx):
            raise ValueError(f"band_px {band_px} does not fit the volume {shape}")
        self.inner = inner
        self.band_px = int(band_px)
        self.outside = nn.Parameter(torch.zeros(shape))
        frame = torch.ones(shape)
        frame[:, band_px:ny - band_px, band_px:nx - band_px] = 0
        self.register_buffer("frame", frame, persistent=False)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """``noise`` (the inner network's input) -> the widened volume ``[nz, ny, nx]``."""
        b = self.band_px
        inner = F.pad(self.inner(noise), (b, b, b, b))
        return inner + self.outside * self.frame
