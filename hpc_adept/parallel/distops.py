"""The laminography operator with the angles shared between MPI ranks.

:class:`DistributedLaminoOperator` is a :class:`~hpc_adept.lamino.LaminoOperator` (same
constructor plus the ranks, same ``forward`` / ``adjoint`` / ``fbp``, autograd, ``.H``,
``angles_subset`` and ``with_geometry``). Every rank passes the full volume or the full
projection stack; each one projects, backprojects or filters-and-backprojects only its
block of angles (:func:`block_range`), and the partial results are combined over ranks
(all-gather of projection blocks, sum of partial volumes), so every rank returns the same
full result and the work per call divides by the number of ranks.

With ``exact`` (the default; ``runtime.deterministic``) the sums of partial volumes are
exact, so every result has the same bits on any number of ranks: each angle's volume is
computed on its own (:func:`exact_angle_sum`) and summed in fixed point
(:mod:`hpc_adept.parallel.fixedpoint`). The projections need no such care: each angle's
projection does not depend on the other angles of its block, and the blocks are only
concatenated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.parallel.collectives import allreduce_sum
from hpc_adept.parallel.context import ParallelContext
from hpc_adept.parallel.fixedpoint import dequantize, fixed_point_exponent, quantize
from hpc_adept.parallel.partition import block_range

#: Bytes of per-angle volumes an exact sum keeps between its two passes (beyond that it
#: computes them again).
EXACT_KEEP_BYTES = 256 * 2**20


def exact_angle_sum(ctx: ParallelContext, contribution: Callable[[int], torch.Tensor],
                    mine: range, n_total: int, shape: tuple[int, ...],
                    device: torch.device | str, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """``sum_n contribution(n)`` over the angles of all ranks, the same bits on any number
    of ranks (collective).

    Parameters
    ----------
    ctx : ParallelContext
    contribution : callable
        Angle index -> its term, a float tensor of ``shape`` on ``device``, computed from
        that angle alone (so its bits do not depend on the partition).
    mine : range
        This rank's angles.
    n_total : int
        Angles over all ranks.
    shape, device, dtype
        Of the result.

    Notes
    -----
    Two passes: the terms' maxima (one slot per angle, each written by one rank, so their
    all-reduce is exact) fix the fixed-point grid; then the terms are rounded onto it and
    the int64 sums added over ranks. Terms that fit in :data:`EXACT_KEEP_BYTES` are kept
    between the passes, the others computed again. A non-finite term gives NaN.
    """
    slots, kept, room = np.zeros(max(n_total, 1)), {}, EXACT_KEEP_BYTES
    for n in mine:
        part = contribution(n)
        slots[n] = float(part.abs().max())
        if part.numel() * part.element_size() <= room:
            kept[n], room = part, room - part.numel() * part.element_size()
    k = fixed_point_exponent(float(allreduce_sum(ctx, slots).max()), n_total)
    if k is None:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    total = torch.zeros(shape, dtype=torch.int64, device=device)
    for n in mine:
        part = kept.pop(n) if n in kept else contribution(n)
        total += quantize(part, k, n_total)
    summed = allreduce_sum(ctx, total.cpu().numpy())
    return dequantize(torch.from_numpy(np.ascontiguousarray(summed)).to(device), k, dtype)


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
    autograd graph on more than one rank, nor with ``exact``.

    ``exact`` (keyword, default True): sums of volumes that have the same bits on any
    number of ranks (one rank included), see :func:`exact_angle_sum`; False: each rank
    sums its block in float, the ranks' sums added by the all-reduce (faster, last bits
    depend on the rank count).
    """

    def __init__(self, geometry: Geometry, kernel: str = "torch",
                 max_chunk_bytes: int | None = None, *, ctx: ParallelContext,
                 exact: bool = True) -> None:
        super().__init__(geometry, kernel, max_chunk_bytes)
        self.ctx = ctx
        self.exact = exact

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

    def _one_angle(self, n: int) -> LaminoOperator:
        """The serial operator of angle ``n`` alone."""
        return LaminoOperator(self.geometry.subset([n]), self.kernel, self.max_chunk_bytes)

    def _exact_sum(self, term: Callable[[int], torch.Tensor],
                   like: torch.Tensor) -> torch.Tensor:
        return exact_angle_sum(self.ctx, term, self._block(), self.geometry.n_angles,
                               self.geometry.volume_shape, like.device, like.dtype)

    def _apply_adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return self._exact_sum(lambda n: self._one_angle(n)._apply_adjoint(
                projections[n:n + 1].contiguous()), projections)
        if not self.ctx.is_parallel:
            return super()._apply_adjoint(projections)
        mine, local_op = self._block(), self._local()
        part = None if local_op is None else \
            local_op._apply_adjoint(projections[mine.start:mine.stop].contiguous())
        return self._sum_volume(part, projections)

    def _fbp(self, projections: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        # each rank filters only its block (the filter acts per projection)
        if self.exact:
            with torch.no_grad():
                return self._exact_sum(lambda n: self._one_angle(n)._fbp(
                    projections[n:n + 1], weights[n:n + 1]), projections)
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
