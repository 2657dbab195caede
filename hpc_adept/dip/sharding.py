"""How the DIP problem is shared out: this rank's angles, z slab, targets and TV weights.

MPI-free (rank and size come in as numbers). Two decompositions (``dip.decomposition``):
``angles``, every rank computes the whole volume and scores a block of the angles; and
``volume``, every rank computes a z slab (aligned with the network's strides, see
:func:`hpc_adept.stages.recon.dip_slab`), projects it for all angles and scores its block
of the angles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hpc_adept.config import DipConfig
from hpc_adept.dip.losses import emphasise, tv_slice_weights
from hpc_adept.dip.shard import ShardData, data_weight
from hpc_adept.io import ProjectionSet
from hpc_adept.lamino import Geometry
from hpc_adept.parallel.partition import block_range


@dataclass(frozen=True)
class DipLayout:
    """This rank's part of the DIP problem.

    Attributes
    ----------
    angles : range
        The angles this rank scores (indices into the full angle list).
    z : range
        The z slices this rank computes: all of them unless ``by_volume``.
    nz : int
        Slices of the whole volume.
    by_volume : bool
        The volume is split into z slabs (``dip.decomposition: volume`` on several ranks).
    """

    angles: range
    z: range
    nz: int
    by_volume: bool

    @property
    def slab(self) -> tuple[int, int, int] | None:
        """``(start, stop, nz)`` with the volume split (see :attr:`ShardData.slab`)."""
        return (self.z.start, self.z.stop, self.nz) if self.by_volume else None


def dip_layout(n_angles: int, nz: int, size: int, rank: int,
               slab: range | None = None) -> DipLayout:
    """The layout of ``rank`` of ``size``: a block of the ``n_angles`` angles, and the z
    slices ``slab`` of the ``nz`` (None: all, the angles split)."""
    angles = block_range(n_angles, size, rank)
    if slab is not None:
        return DipLayout(angles, slab, nz, True)
    return DipLayout(angles, range(nz), nz, False)


def emphasised_targets(ps: ProjectionSet, d: DipConfig, angles: range) -> np.ndarray:
    """The high-pass emphasised projections of ``angles``, float32 [n_local, nv, nu].

    The emphasis acts per projection: each rank filters only its own block.
    """
    if not len(angles):
        return np.zeros((0, *ps.projections.shape[1:]), np.float32)
    local = ps.projections[angles.start:angles.stop]
    return emphasise(local, d.hpf, d.hpf_wavelet, d.hpf_levels, d.hpf_gain)


def shard_geometry(full: Geometry, layout: DipLayout) -> Geometry | None:
    """What this rank projects: its slab for all angles (volume split), or the whole volume
    for its own angles (None: no angle)."""
    if layout.by_volume:
        return full.slab(layout.z.start, layout.z.stop)
    if not len(layout.angles):
        return None
    return full.subset(slice(layout.angles.start, layout.angles.stop))


def build_shard(ps: ProjectionSet, d: DipConfig, volume_shape: tuple[int, int, int],
                layout: DipLayout, tv_weights: np.ndarray,
                device: torch.device, pixel_weights: torch.Tensor | None = None,
                plane_free: bool = False) -> ShardData:
    """This rank's :class:`ShardData` on ``device``.

    Parameters
    ----------
    ps : ProjectionSet
        All projections (every rank reads them; only its block is used).
    d : DipConfig
    volume_shape : (nz, ny, nx)
        The volume the network computes (a region widened by a lateral margin, or not).
    layout : DipLayout
    tv_weights : ndarray, float, [nz]
        TV weight per slice of the whole volume (:func:`tv_slice_weights`).
    device : torch.device
    pixel_weights : torch.Tensor, float32, [n_angles, nv, nu], optional
        Data-term weights of ALL angles (e.g. :func:`hpc_adept.lamino.coverage.full_path_mask`);
        with ``dip.data_term: mean`` the mean is taken over their sum.
    plane_free : bool
        See :class:`ShardData`.
    """
    n_total = len(ps.angles_deg)
    detector = tuple(ps.projections.shape[1:])
    full = Geometry(ps.angles_deg, ps.tilt_deg, volume_shape, detector)
    targets = emphasised_targets(ps, d, layout.angles)
    weight = data_weight(d.data_term, n_total, detector)
    local_weights = None
    if pixel_weights is not None:
        if d.data_term == "mean":
            weight = 2.0 / max(float(pixel_weights.double().sum()), 1.0)
        local_weights = pixel_weights[layout.angles.start:layout.angles.stop].to(device)
    return ShardData(
        torch.from_numpy(targets).to(device), shard_geometry(full, layout),
        np.arange(layout.angles.start, layout.angles.stop), n_total,
        torch.from_numpy(tv_weights[layout.z.start:layout.z.stop]).float().to(device),
        weight, slab=layout.slab, weights=local_weights, plane_free=plane_free)


def volume_tv_weights(ps: ProjectionSet, d: DipConfig, nz: int) -> np.ndarray:
    """TV weight per slice of the whole volume, bottom first, [nz] (``dip.tv_weights``
    changing at the heights ``dip.tv_z_bounds_m``)."""
    return tv_slice_weights(nz, ps.pixel_size_m, d.tv_weights, d.tv_z_bounds_m)
