"""The DIP's data term with the angles split, summed exactly: the same bits on any number
of ranks.

Every rank runs the same network on the same input, so every rank holds the same volume
``x``. The data term ``sum_n c ||H_n x - y_n||^2 / 2`` and its volume gradient
``sum_n c H_n^T (H_n x - y_n)`` are computed **angle by angle** (each angle on its own, so
its bits do not depend on which other angles a rank holds), and summed exactly:

- each angle's loss goes into its own slot of a float64 vector (the other ranks put zeros
  there), so the all-reduce of the vector is exact, and every rank adds the slots in the
  same order;
- each angle's gradient is rounded onto a fixed-point grid (:mod:`hpc_adept.parallel.
  fixedpoint`) whose step comes from a bound every rank knows: ``c * gain * max_n |r_n|``
  with ``gain = max_n max(H_n^T 1)`` (the projector's weights are non-negative, so
  ``|H_n^T r| <= gain * max|r|``), and the int64 sum over angles and ranks is exact.

Every rank then runs the same backward of the network from the same volume gradient:
there is no weight-gradient all-reduce (no DistributedDataParallel) and every rank takes
the same Adam step. MPI-free: the sums over ranks go through the communicator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hpc_adept.dip.shard import Forward, Projector, ShardData
from hpc_adept.parallel.fixedpoint import fixed_point_exponent, quantize


@dataclass(frozen=True)
class AngleTerm:
    """One of this rank's angles.

    Attributes
    ----------
    index : int
        Its index in the full angle list.
    forward : Forward
        Projection of the whole volume for this angle alone.
    target : torch.Tensor, float32, [1, nv, nu]
    weight : torch.Tensor, float32, [1, nv, nu] or None
        Pixel weights of the data term (:attr:`ShardData.weights`); None: all 1.
    """

    index: int
    forward: Forward
    target: torch.Tensor
    weight: torch.Tensor | None = None


@dataclass(frozen=True)
class Scored:
    """One step's projections of this rank's angles.

    Attributes
    ----------
    projections : list of torch.Tensor, [1, nv, nu]
        Differentiable with respect to the volume leaf.
    residuals : list of torch.Tensor, [1, nv, nu]
        ``scale * W_n P (H_n x - y_n)``: the gradient's seed of each angle (``W_n`` its
        pixel weights, ``P`` the plane removal of a plane-free data term, else 1).
    slots : torch.Tensor, float64, [2 n_total]
        Each angle's loss at its index, its largest ``|scale * r_n|`` at ``n_total +
        index``; zeros for the other ranks' angles.
    """

    projections: list[torch.Tensor]
    residuals: list[torch.Tensor]
    slots: torch.Tensor


@dataclass(frozen=True)
class ExactGroup:
    """The data term of one angle group, angle by angle.

    Attributes
    ----------
    terms : list of AngleTerm
        This rank's angles of the group (possibly none).
    scale : float
        The data weight times ``n_total / n_group``.
    n_total : int
        Angles over all ranks (the slot vector's half length).
    n_group : int
        Angles of the group over all ranks (the number of gradient terms summed).
    plane_free : bool
        Score each residual without its weighted least-squares plane
        (:attr:`ShardData.plane_free`).
    """

    terms: list[AngleTerm]
    scale: float
    n_total: int
    n_group: int
    plane_free: bool = False

    def score(self, volume: torch.Tensor) -> Scored:
        """Project ``volume`` (a leaf that requires grad) for each angle; losses in the
        slots (``0.5 * scale * ||r||^2`` in float64)."""
        slots = volume.new_zeros(2 * self.n_total, dtype=torch.float64)
        projections, residuals = [], []
        for term in self.terms:
            projected = term.forward(volume)
            raw = projected.detach() - term.target
            if self.plane_free:  # r minus its weighted plane: P_w r
                from hpc_adept.lamino.planes import remove_planes

                raw = remove_planes(raw, term.weight)
            # loss 0.5 * scale * sum w (P_w r)^2; its gradient's seed scale * W P_w r (W P_w
            # is symmetric and P_w idempotent)
            seed = raw if term.weight is None else raw * term.weight
            residual = seed.mul(self.scale)
            projections.append(projected)
            residuals.append(residual)
            slots[term.index] = (raw.double() * seed.double()).sum() * (0.5 * self.scale)
            slots[self.n_total + term.index] = residual.abs().max().double()
        return Scored(projections, residuals, slots)

    def gradient(self, volume: torch.Tensor, scored: Scored, k: int) -> torch.Tensor:
        """This rank's part of the volume gradient on the grid ``2**-k``, int64
        [nz, ny, nx] (the projections' graphs are consumed)."""
        total = torch.zeros(volume.shape, dtype=torch.int64, device=volume.device)
        for projected, residual in zip(scored.projections, scored.residuals, strict=True):
            (grad,) = torch.autograd.grad(projected, volume, residual)
            total += quantize(grad, k, self.n_group)
        return total


def plan_exact_groups(shard: ShardData, angles_per_step: int | None,
                      projector: Projector) -> list[ExactGroup]:
    """The groups of :func:`hpc_adept.dip.shard.plan_data_terms` (the same interleaved
    angle groups), scored angle by angle."""
    n_groups = 1 if not angles_per_step else max(1, math.ceil(shard.n_total / angles_per_step))
    groups = []
    for g in range(n_groups):
        members = np.arange(g, shard.n_total, n_groups)
        mine = np.flatnonzero(shard.global_index % n_groups == g)
        terms = [AngleTerm(int(shard.global_index[i]), projector(shard.geometry.subset([i])),
                           shard.targets[i][None],
                           None if shard.weights is None else shard.weights[i][None])
                 for i in mine.tolist()]
        groups.append(ExactGroup(terms, shard.data_weight * shard.n_total / len(members),
                                 shard.n_total, len(members), shard.plane_free))
    return groups


def local_gains(groups: list[ExactGroup], volume_like: torch.Tensor) -> torch.Tensor:
    """Slots of ``max(H_n^T 1)`` for this rank's angles, float64 [n_total] (zeros
    elsewhere): the all-reduced maximum bounds every angle's adjoint."""
    n_total = groups[0].n_total
    gains = volume_like.new_zeros(n_total, dtype=torch.float64)
    probe = torch.zeros_like(volume_like).requires_grad_(True)
    for group in groups:
        for term in group.terms:
            projected = term.forward(probe)
            (ones_back,) = torch.autograd.grad(projected, probe, torch.ones_like(projected))
            gains[term.index] = ones_back.abs().max().double()
    return gains


def gradient_exponent(scored_max: float, gain: float, n_group: int) -> int | None:
    """The grid exponent of a step: terms bounded by ``gain * max |scale r|``."""
    return fixed_point_exponent(gain * scored_max, n_group)
