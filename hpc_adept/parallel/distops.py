"""Laminography operators with the angles shared between MPI ranks.

Every rank holds the full projection stack and the full volume; each one projects,
backprojects or filters-and-backprojects only its block of angles (:func:`block_range`),
and the partial results are combined over ranks (all-gather of projection blocks, sum of
partial volumes), so every rank returns the same full result and the work per call divides
by the number of ranks. The objects satisfy :class:`hpc_adept.align.LaminoOps`.
"""

from __future__ import annotations

import numpy as np
import torch

from hpc_adept.lamino import Geometry, angular_weights, backproject, project, ramp_filter
from hpc_adept.parallel.collectives import allreduce_sum
from hpc_adept.parallel.context import ParallelContext
from hpc_adept.parallel.partition import block_range


def allgather_blocks(ctx: ParallelContext, local: np.ndarray, n_items: int) -> np.ndarray:
    """Concatenate per-rank blocks ``[len(block_range(n, size, rank)), ...]`` along the
    first axis in rank order (every rank gets the ``[n_items, ...]`` result)."""
    if not ctx.is_parallel:
        return local
    tail = local.shape[1:]
    per_item = int(np.prod(tail)) if tail else 1
    counts = [len(block_range(n_items, ctx.size, r)) * per_item for r in range(ctx.size)]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    out = np.empty((n_items, *tail), dtype=local.dtype)
    from mpi4py import MPI

    if local.dtype not in (np.float32, np.float64):
        raise TypeError(f"allgather_blocks: float32/float64 only, got {local.dtype}")
    mpi_type = MPI.DOUBLE if local.dtype == np.float64 else MPI.FLOAT
    ctx.comm.Allgatherv(np.ascontiguousarray(local), [out, counts, displs, mpi_type])
    return out


class DistributedLamino:
    """``fbp`` / ``project`` / ``backproject`` over the angles of all ranks.

    Parameters
    ----------
    ctx : ParallelContext
        The ranks that share the work (a serial context works too).

    Notes
    -----
    Tensors stay on their device for the local work; the combination goes through host
    memory (NumPy + MPI). Inputs must be the same on every rank.
    """

    def __init__(self, ctx: ParallelContext) -> None:
        self.ctx = ctx

    def _mine(self, geometry: Geometry) -> tuple[range, Geometry | None]:
        mine = block_range(geometry.n_angles, self.ctx.size, self.ctx.rank)
        if not len(mine):
            return mine, None
        sub = Geometry(geometry.angles_deg[mine.start:mine.stop], geometry.tilt_deg,
                       geometry.volume_shape, geometry.detector_shape)
        return mine, sub

    def _sum_volume(self, part: torch.Tensor | None, like: torch.Tensor,
                    geometry: Geometry) -> torch.Tensor:
        host = np.zeros(geometry.volume_shape, dtype=_numpy_dtype(like)) if part is None \
            else part.cpu().numpy()
        total = allreduce_sum(self.ctx, host)
        return torch.from_numpy(np.ascontiguousarray(total)).to(like.device)

    def project(self, volume: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Projections ``[n_angles, nv, nu]`` of ``volume`` ``[nz, ny, nx]``."""
        mine, sub = self._mine(geometry)
        with torch.no_grad():
            if sub is None:
                local = np.zeros((0, *geometry.detector_shape), _numpy_dtype(volume))
            else:
                local = project(volume, sub).cpu().numpy()
        full = allgather_blocks(self.ctx, local, geometry.n_angles)
        return torch.from_numpy(full).to(volume.device)

    def backproject(self, projections: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Exact adjoint of :meth:`project`: ``[n_angles, nv, nu] -> [nz, ny, nx]``."""
        mine, sub = self._mine(geometry)
        part = None
        if sub is not None:
            with torch.no_grad():
                part = backproject(projections[mine.start:mine.stop].contiguous(), sub)
        return self._sum_volume(part, projections, geometry)

    def fbp(self, projections: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Filtered backprojection (as :func:`hpc_adept.lamino.fbp`)."""
        mine, sub = self._mine(geometry)
        part = None
        if sub is not None:
            weights = angular_weights(geometry)[mine.start:mine.stop]
            with torch.no_grad():
                filtered = ramp_filter(projections[mine.start:mine.stop], geometry.tilt_deg)
                w = torch.as_tensor(weights, dtype=filtered.dtype, device=filtered.device)
                part = backproject((filtered * w[:, None, None]).contiguous(), sub)
        return self._sum_volume(part, projections, geometry)


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return np.dtype(np.float64) if tensor.dtype == torch.float64 else np.dtype(np.float32)
