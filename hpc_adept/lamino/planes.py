"""Per-projection constant and linear ramp: the part of a phase projection that
ptychography without a vacuum reference leaves undetermined.

:func:`remove_planes` projects every image onto the orthogonal complement of
``span{1, v, u}`` (weighted least squares per image). It is linear, idempotent and
differentiable, so a data term ``||remove_planes(H x - y)||^2`` is exactly blind to any
offset and ramp of the data: the same as fitting three free parameters per projection and
minimising over them in closed form. MPI-free.

The price: a uniform z layer of a wide slab projects to a constant in every projection, so
such a data term cannot see each slice's level either. :func:`level_slices` fixes that
level after the reconstruction (the dielectric, most of every layer, at 0).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["level_slices", "plane_basis", "remove_planes"]


def plane_basis(shape: tuple[int, int], dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The images ``1``, ``v`` and ``u`` (centred, scaled to [-0.5, 0.5]) as ``[3, nv, nu]``."""
    nv, nu = shape
    v = (torch.arange(nv, dtype=dtype, device=device) - (nv - 1) / 2.0) / max(nv, 1)
    u = (torch.arange(nu, dtype=dtype, device=device) - (nu - 1) / 2.0) / max(nu, 1)
    return torch.stack([torch.ones(nv, nu, dtype=dtype, device=device),
                        v[:, None].expand(nv, nu), u[None, :].expand(nv, nu)])


def remove_planes(images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` minus their weighted least-squares plane, image by image.

    Parameters
    ----------
    images : torch.Tensor, float, [n, nv, nu]
    weights : torch.Tensor, float, [n, nv, nu] or [nv, nu], optional
        Non-negative pixel weights of the fit (default 1); where they leave part of the
        plane undetermined (all zero, one lit column), only the determined part is fitted.

    Returns
    -------
    torch.Tensor, same shape, dtype and device
        The residual of the fit (differentiable in ``images``).
    """
    basis = plane_basis(tuple(images.shape[-2:]), images.dtype, images.device)
    w = torch.ones_like(images) if weights is None else weights.to(images.dtype).expand_as(
        images)
    weighted = basis[None] * w[:, None]                       # [n, 3, nv, nu]
    gram = torch.einsum("nkij,lij->nkl", weighted, basis)     # [n, 3, 3]
    rhs = torch.einsum("nkij,nij->nk", weighted, images)      # [n, 3]
    # the pseudo-inverse: exact for a full image, finite for an image whose weights leave
    # the plane undetermined (e.g. one lit column: only what is determined is removed)
    coef = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(-1)).squeeze(-1)
    return images - torch.einsum("nk,kij->nij", coef, basis)


def level_slices(volume: np.ndarray) -> np.ndarray:
    """``volume`` with every z slice shifted so that its median is 0.

    For a region of a wide slab reconstructed from projections whose offsets are unknown,
    each slice's level is in the null space of the data term (a uniform layer projects to a
    constant); the median, the dielectric wherever metal fills less than half of a layer,
    is the level fixed here.

    Parameters
    ----------
    volume : ndarray, float, [nz, ny, nx]

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
    """
    volume = np.asarray(volume, dtype=np.float32)
    return volume - np.median(volume, axis=(1, 2), keepdims=True).astype(np.float32)
