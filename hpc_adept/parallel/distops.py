"""The laminography operator with the angles shared between MPI ranks.

:class:`DistributedLaminoOperator` is a :class:`~hpc_adept.lamino.LaminoOperator` (same
constructor plus the ranks, same ``forward`` / ``adjoint`` / ``fbp``, autograd, ``.H``,
``angles_subset`` and ``with_geometry``). Every rank passes the full volume or the full
projection stack; each one projects, backprojects or filters-and-backprojects only its
block of angles (:func:`block_range`), and the partial results are combined over ranks
(all-gather of projection blocks, sum of partial volumes), so every rank returns the same
full result and the work per call divides by the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from hpc_adept.lamino import Geometry, LaminoOperator
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


class DistributedLaminoOperator(LaminoOperator):
    """:class:`~hpc_adept.lamino.LaminoOperator` over the angles of all ranks.

    Parameters
    ----------
    geometry, kernel, max_chunk_bytes
        As for :class:`~hpc_adept.lamino.LaminoOperator` (the whole scan).
    ctx : ParallelContext
        The ranks that share the work (a serial context works too: then it is the
        serial operator).

    Notes
    -----
    Inputs must be the same on every rank, and every rank must make the same calls (they
    are collective, autograd's backward included). Tensors stay on their device for the
    local work; the combination goes through host memory (NumPy + MPI). ``fbp`` builds no
    autograd graph on more than one rank.
    """

    def __init__(self, geometry: Geometry, kernel: str = "torch",
                 max_chunk_bytes: int | None = None, *, ctx: ParallelContext) -> None:
        super().__init__(geometry, kernel, max_chunk_bytes)
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, rank {self.ctx.rank} of {self.ctx.size})"

    def _block(self) -> range:
        """This rank's angles."""
        return block_range(self.geometry.n_angles, self.ctx.size, self.ctx.rank)

    def _local(self) -> LaminoOperator | None:
        """The serial operator on this rank's angles (None: it has none)."""
        mine = self._block()
        if not len(mine):
            return None
        return LaminoOperator(self.geometry.subset(slice(mine.start, mine.stop)),
                              self.kernel, self.max_chunk_bytes)

    def _sum_volume(self, part: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Sum of the ranks' partial volumes, on ``like``'s device and dtype."""
        host = np.zeros(self.geometry.volume_shape, dtype=_numpy_dtype(like)) \
            if part is None else part.cpu().numpy()
        total = allreduce_sum(self.ctx, host)
        return torch.from_numpy(np.ascontiguousarray(total)).to(like.device)

    def _apply_forward(self, volume: torch.Tensor) -> torch.Tensor:
        if not self.ctx.is_parallel:
            return super()._apply_forward(volume)
        local_op = self._local()
        if local_op is None:
            local = np.zeros((0, *self.geometry.detector_shape), _numpy_dtype(volume))
        else:
            local = local_op._apply_forward(volume).cpu().numpy()
        full = allgather_blocks(self.ctx, local, self.geometry.n_angles)
        return torch.from_numpy(full).to(volume.device)

    def _apply_adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        if not self.ctx.is_parallel:
            return super()._apply_adjoint(projections)
        mine, local_op = self._block(), self._local()
        part = None if local_op is None else \
            local_op._apply_adjoint(projections[mine.start:mine.stop].contiguous())
        return self._sum_volume(part, projections)

    def _fbp(self, projections: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        # each rank filters only its block (the filter acts per projection)
        if not self.ctx.is_parallel:
            return super()._fbp(projections, weights)
        mine, local_op = self._block(), self._local()
        part = None
        if local_op is not None:
            with torch.no_grad():
                part = local_op._fbp(projections[mine.start:mine.stop],
                                     weights[mine.start:mine.stop])
        return self._sum_volume(part, projections)


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return np.dtype(np.float64) if tensor.dtype == torch.float64 else np.dtype(np.float32)
