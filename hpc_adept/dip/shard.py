"""This rank's share of the DIP problem, and the data term of each training step.

MPI-free. The three ways a rank scores the projections are three small strategies
(:class:`NoAngles`, :class:`OwnAngles`, :class:`SlabAngles`), chosen once per angle group
by :func:`plan_data_terms`; the training loop calls them without knowing which it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from hpc_adept.dip.losses import data_loss
from hpc_adept.lamino import Geometry

#: A forward projection bound to one geometry: volume [nz, ny, nx] -> projections
#: [n_angles, nv, nu] (differentiable, float32).
Forward = Callable[[torch.Tensor], torch.Tensor]
#: Makes the :data:`Forward` of a geometry
#: (see :func:`hpc_adept.dip.trainer.default_projector`).
Projector = Callable[[Geometry], Forward]


@dataclass
class ShardData:
    """This rank's share of the problem.

    Attributes
    ----------
    targets : torch.Tensor, float32, [n_local, nv, nu]
        The (emphasised) measured projections of this rank's angles, on the device.
    geometry : Geometry or None
        Geometry of these angles (None when the rank has none); with
        ``slab``, the geometry of ALL angles for this rank's slab of the volume
        (``Geometry.slab``).
    global_index : ndarray, int, [n_local]
        Index of each local angle in the full angle list.
    n_total : int
        Number of angles over all ranks.
    tv_weights : torch.Tensor, float32, [nz]
        Per-slice TV weights, on the device.
    data_weight : float
        Multiplies ``0.5 ||H x - y||^2``: 1 for the plain sum (ADePt eq. 1), ``2 / (number
        of projection pixels over all angles)`` for the reference code's mean squared error
        (see :func:`data_weight`).
    slab : (start, stop, nz) or None
        Volume decomposition: this rank computes the z slices ``start .. stop - 1`` of the
        ``nz``, projects them for all angles and scores its ``global_index`` angles;
        ``tv_weights`` are then the slab's. None: the whole volume (angles split).
    weights : torch.Tensor, float32, [n_local, nv, nu] or None
        Pixel weights of the data term (e.g. 0 where a ray leaves a widened volume, see
        :func:`hpc_adept.lamino.coverage.full_path_mask`); None: all 1.
    plane_free : bool
        The data term ignores each projection's constant and linear ramp (see
        :func:`hpc_adept.dip.losses.data_loss`).
    """

    targets: torch.Tensor
    geometry: Geometry | None
    global_index: np.ndarray
    n_total: int
    tv_weights: torch.Tensor
    data_weight: float = 1.0
    slab: tuple[int, int, int] | None = None
    weights: torch.Tensor | None = None
    plane_free: bool = False


def data_weight(kind: str, n_total: int, detector_shape: tuple[int, int]) -> float:
    """Weight of ``0.5 ||H x - y||^2`` for ``kind`` ``sum`` (1) or ``mean`` (the MSE)."""
    if kind == "sum":
        return 1.0
    if kind == "mean":
        return 2.0 / (n_total * detector_shape[0] * detector_shape[1])
    raise ValueError(f"unknown data term normalisation {kind!r} (sum, mean)")


class ProjectionSum(Protocol):
    """What a data term needs from the communicator (see
    :class:`hpc_adept.dip.trainer.Communicator`)."""

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        """Projections of the whole volume from this rank's part (differentiable)."""


class DataTerm(Protocol):
    """This rank's part of the data term of one step (a 0-d tensor, differentiable)."""

    def __call__(self, volume: torch.Tensor, comm: ProjectionSum) -> torch.Tensor:
        """``volume`` [nz, ny, nx] (or this rank's slab of it), float32."""


@dataclass(frozen=True)
class NoAngles:
    """No angle of the group on this rank (angles split): a zero that still depends on the
    volume, so that every rank runs the same backward (DDP's all-reduce)."""

    def __call__(self, volume: torch.Tensor, comm: ProjectionSum) -> torch.Tensor:
        return volume.sum() * 0.0


@dataclass(frozen=True)
class OwnAngles:
    """The whole volume projected for this rank's angles of the group (angles split, or
    one process).

    Attributes
    ----------
    forward : Forward
        Projection for these angles.
    targets : torch.Tensor, float32, [n_mine, nv, nu]
    scale : float
        The data weight times ``n_total / n_group``.
    weights : torch.Tensor, float32, [n_mine, nv, nu] or None
    plane_free : bool
        See :class:`ShardData`.
    """

    forward: Forward
    targets: torch.Tensor
    scale: float
    weights: torch.Tensor | None = None
    plane_free: bool = False

    def __call__(self, volume: torch.Tensor, comm: ProjectionSum) -> torch.Tensor:
        return self.scale * data_loss(self.forward(volume), self.targets, self.weights,
                                      self.plane_free)


@dataclass(frozen=True)
class SlabAngles:
    """This rank's slab projected for every angle of the group, the slabs' projections
    summed over ranks, this rank's own angles scored (volume split).

    Attributes
    ----------
    forward : Forward
        Projection of the slab for all the group's angles.
    targets : torch.Tensor, float32, [n_mine, nv, nu]
    scale : float
        The data weight times ``n_total / n_group``.
    scored : torch.Tensor, int64, [n_mine]
        Rows of the group's projections that are this rank's angles.
    weights : torch.Tensor, float32, [n_mine, nv, nu] or None
    plane_free : bool
        See :class:`ShardData`.
    """

    forward: Forward
    targets: torch.Tensor
    scale: float
    scored: torch.Tensor
    weights: torch.Tensor | None = None
    plane_free: bool = False

    def __call__(self, volume: torch.Tensor, comm: ProjectionSum) -> torch.Tensor:
        predicted = comm.reduce_projections(self.forward(volume))
        return self.scale * data_loss(predicted[self.scored], self.targets, self.weights,
                                      self.plane_free)


def plan_data_terms(shard: ShardData, angles_per_step: int | None,
                    projector: Projector) -> list[DataTerm]:
    """The data terms of the angle groups, used in turn (one group per step).

    With ``angles_per_step = k`` the angles are dealt into ``ceil(n_total / k)`` interleaved
    groups (``index % n_groups``), like the reference's alternating halves; None: one group
    of all angles.
    """
    n_groups = 1 if not angles_per_step else max(1, math.ceil(shard.n_total / angles_per_step))
    return [_data_term(shard, g, n_groups, projector) for g in range(n_groups)]


def _data_term(shard: ShardData, g: int, n_groups: int, projector: Projector) -> DataTerm:
    """The strategy of group ``g`` of ``n_groups`` on this rank."""
    device = shard.targets.device
    members = np.arange(g, shard.n_total, n_groups)
    scale = shard.data_weight * shard.n_total / len(members)
    mine = np.flatnonzero(shard.global_index % n_groups == g)
    rows = torch.as_tensor(mine, device=device)
    targets = shard.targets[rows]
    weights = None if shard.weights is None else shard.weights[rows]
    if shard.slab is not None:
        scored = np.searchsorted(members, shard.global_index[mine])
        return SlabAngles(projector(shard.geometry.subset(members)), targets, scale,
                          torch.as_tensor(scored, device=device), weights, shard.plane_free)
    if shard.geometry is None or not len(mine):
        return NoAngles()
    return OwnAngles(projector(shard.geometry.subset(mine)), targets, scale, weights,
                     shard.plane_free)
